"""Triton's gRPC messages: `service_pb2` (grpc_service.proto, package `inference`) and `model_config_pb2`
(model_config.proto), the protoc output that tritonclient 2.73.0 ships as `tritonclient.grpc.*_pb2`, copied
unchanged but for one import line (service_pb2 imports model_config_pb2 from here).

They are copied so that the serving install needs only grpcio and protobuf, not tritonclient and its
dependencies (34 MB more in the image). The wire format is Triton's, so tritonclient.grpc talks to it as to Triton;
in a process that imports both copies, protobuf registers the identical descriptors once and both give the same
message classes. Copyright NVIDIA, under the BSD-3-Clause license in LICENSE.txt beside this file.
"""
