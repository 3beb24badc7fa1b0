"""`fastslow serve` and `search --html`: a local web app and JSON API over one `Searcher`, and
the same result view written as one self-contained offline file.

`app.create_app` is the FastAPI app (importable without a socket); `items` maps opaque item
keys to indexed items and decides which files may be served; `view` builds the result cards
and renders the shared Jinja2 templates. Nothing here is imported by `fastslow --help`.
"""
