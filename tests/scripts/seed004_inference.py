# A model script in the style seed 004 describes (the SageMaker scikit-learn container wrapping an
# XGBoost model): the four functions over a pandas DataFrame, with content negotiation done by hand.
# Kept as users write it; mainsail must run it unchanged.
import json
import os
from io import StringIO

import joblib
import pandas as pd

FEATURES = ["length", "diameter", "height", "whole_weight"]


def model_fn(model_dir):
    """Deserialize and return the fitted model"""
    return joblib.load(os.path.join(model_dir, "xgb_model.joblib"))


def input_fn(input_data, content_type):
    """Parse input data payload"""
    if not input_data:
        raise ValueError("Empty input data is not supported!")
    if isinstance(input_data, bytes):
        input_data = input_data.decode("utf-8")
    if "text/csv" in content_type:
        return pd.read_csv(StringIO(input_data))
    elif "application/json" in content_type:
        return pd.DataFrame(json.loads(input_data))
    else:
        raise ValueError(f"{content_type} not supported!")


def output_fn(output_df, accept_type):
    """Supports both CSV and JSON output formats."""
    if "text/csv" in accept_type:
        return output_df.fillna("N/A").to_csv(index=False), "text/csv"
    elif "application/json" in accept_type:
        return output_df.to_json(orient="records"), "application/json"
    else:
        raise RuntimeError(f"{accept_type} accept type is not supported by this script.")


def predict_fn(df, model):
    """Make predictions on the input DataFrame, matching columns by name in any order/case."""
    lower = {c.lower(): c for c in df.columns}
    missing = [f for f in FEATURES if f not in lower]
    if missing:
        raise ValueError(f"missing features: {missing}")
    X = df[[lower[f] for f in FEATURES]]
    X.columns = FEATURES
    df["prediction"] = model.predict(X)
    return df
