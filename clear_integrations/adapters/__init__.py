"""Framework adapters: ``clear_integrations.adapters.langchain`` and ``clear_integrations.adapters.llama_index``.

Each imports its framework; the core package imports neither.
"""
