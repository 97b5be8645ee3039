"""Our .proto files and the Python code generated from them (`python -m proto.generate`).

    from proto import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

The package `inference` is Triton's: these stubs cannot share a process with
tritonclient's, which register the same protobuf names.
"""
