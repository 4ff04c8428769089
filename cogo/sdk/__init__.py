"""The SDK: what a user imports to declare and run agents (``cogo.App``, ``cogo.TaskContext``,
``ctx.llm``, ``ctx.step``, ``ctx.call``, ``cogo.Client``, the harness).

It stands on the foundation (``cogo.errors``, ``cogo.config``, ``cogo.streams``, ...) and
never on the runtime (``cogo.runtime``): ``scripts/import_graph.py`` fails if it does.
"""
