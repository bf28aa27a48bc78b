"""A SageMaker inference script as users write it for the scikit-learn container.

The benchmark copies this file to ``<model_dir>/code/inference.py``; mainsail, the Flask peer and the
in-process floor all run it unchanged. It must not import anything from ``bench`` or ``mainsail``.
"""

import io
import json
import os

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if isinstance(request_body, bytes):
        request_body = request_body.decode("utf-8")
    if request_content_type == "text/csv":
        array = np.genfromtxt(io.StringIO(request_body), delimiter=",", dtype=float)
    elif request_content_type == "application/json":
        array = np.array(json.loads(request_body), dtype=float)
    else:
        raise ValueError(f"unsupported content type {request_content_type}")
    return array.reshape(1, -1) if array.ndim == 1 else array


def predict_fn(input_data, model):
    return model.predict_proba(input_data)[:, 1]


def output_fn(prediction, accept):
    return json.dumps(prediction.tolist()), "application/json"
