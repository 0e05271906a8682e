"""The ``adapler`` command line: one entry point over the method, the pipelines and serving."""
