"""`fastx serve`: an OpenAI-compatible HTTP server on one paged engine (install with `pip install "fastx[serve]"`).

protocol.py   the request and response schema (pydantic), and the mapping onto SamplingParams
bridge.py     the one engine loop (a thread stepping the engine) and the asyncio side that awaits it
metrics.py    Prometheus metrics, written by the engine loop
embeddings.py a resident encoder for /v1/embeddings
errors.py     OpenAI-shaped errors
app.py        the FastAPI routes
"""
