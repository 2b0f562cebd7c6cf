"""The development stack behind ``crmcache up``: an embedded Redis, the sandbox Wrapper, the
processes of the pipeline under one supervisor, and the demo."""
