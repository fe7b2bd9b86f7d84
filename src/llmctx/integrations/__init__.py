"""Framework hooks where patching the SDK classes is not enough (LiteLLM's raw HTTP providers).

``llmctx.instrument()`` installs them; nothing here is imported by hand. See
``docs/integrations.md`` for what is charged through each framework.
"""
