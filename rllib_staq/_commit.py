"""The commit of a tree exported with ``git archive``, which has no ``.git`` to ask.

``.gitattributes`` marks this file ``export-subst``: ``git archive`` writes the commit's short
hash in place of the placeholder below. In a git checkout the placeholder stays, and
``rllib_staq.compare.source_commit`` asks git instead.
"""

ARCHIVE_COMMIT = "$Format:%h$"
