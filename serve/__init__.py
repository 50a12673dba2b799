"""The FastAPI inference service (ONNX Runtime engine, routes, settings).

It imports neither torch nor ``compress``: only onnxruntime, numpy, pillow, fastapi and uvicorn, so
the Docker image installs the base distribution only. Built by the serving issue (see DESIGN.md).
"""
