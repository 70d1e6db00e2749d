"""The generated contract, imported through this one module.

Generated code lives in `troop.v1` (from `buf generate`, never edited by hand).
"""

from troop.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    openai_pb2,
    openai_pb2_grpc,
)

COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
OPENAI_SERVICE = openai_pb2.DESCRIPTOR.services_by_name["OpenAIService"].full_name

__all__ = [
    "COORDINATOR_SERVICE",
    "INFERENCE_SERVICE",
    "OPENAI_SERVICE",
    "common_pb2",
    "coordinator_pb2",
    "coordinator_pb2_grpc",
    "inference_pb2",
    "inference_pb2_grpc",
    "openai_pb2",
    "openai_pb2_grpc",
]
