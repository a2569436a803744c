"""The kernel's headers archive, one module per job.

xz.py decodes the compressed bytes, tar.py parses the stream, names.py holds the rules every name
in the tree obeys, extract.py writes the members safely, and manifest.py records what was written
(and checks a tree against it).
"""
