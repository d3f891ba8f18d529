"""The EMQX ExHook protos, unmodified; a package only so they install with hookrules."""
