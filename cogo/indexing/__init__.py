"""Indexing a repository: which files, in which language, with which symbols.

``files`` lists a repository's files (``git ls-files``, or a walk honouring ``.gitignore``
through pathspec, git's own matching rules), ``symbols`` extracts classes, functions,
methods and imports (``ast`` for Python, light regular expressions for JavaScript /
TypeScript, Go and Rust), ``scan`` hashes and parses what changed. All of it blocks: the
indexer actor (``cogo.agents.indexer``) runs it in a thread.
"""
