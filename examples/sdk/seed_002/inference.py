# inference.py - SKLearn 推理脚本
import os

import joblib
import numpy as np


def model_fn(model_dir):
    """加载模型"""
    model_path = os.path.join(model_dir, 'model.joblib')
    model = joblib.load(model_path)
    return model

def input_fn(request_body, request_content_type):
    """解析输入数据"""
    if request_content_type == 'application/json':
        import json
        data = json.loads(request_body)
        return np.array(data['instances'])
    else:
        raise ValueError(f"Unsupported content type: {request_content_type}")

def predict_fn(input_data, model):
    """执行预测"""
    predictions = model.predict(input_data)
    probabilities = model.predict_proba(input_data)
    return {
        'predictions': predictions.tolist(),
        'probabilities': probabilities.tolist()
    }

def output_fn(prediction, accept):
    """格式化输出"""
    import json
    return json.dumps(prediction), 'application/json'
