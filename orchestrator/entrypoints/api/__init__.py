"""The REST API (FastAPI): the app and its routes, the request and response models, the body
size limit."""
