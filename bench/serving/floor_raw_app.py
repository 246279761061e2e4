"""Raw-bytes floor for RSW-1: no model; read the float32 body into a numpy array using X-Tensor-Shape,
answer a constant 10-float list per row with orjson. What Modelport's raw-tensor path is compared with."""

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CONST = [0.1] * 10


async def predict(request: Request) -> Response:
    shape = [int(d) for d in request.headers["x-tensor-shape"].split(",")]
    x = np.frombuffer(await request.body(), dtype=np.float32).reshape(shape)
    return Response(orjson.dumps({"probs": [CONST] * x.shape[0]}), media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
