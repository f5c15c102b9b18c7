"""The HTTP service and web page (the ``serve`` extra: fastapi, uvicorn, python-multipart).

Nothing is imported here, so ``import unetseg.serve`` works without the extra; see
:func:`unetseg.serve.app.create_app`.
"""
