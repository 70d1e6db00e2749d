"""buf `local` plugin: gRPC Python stubs via the protoc inside grpcio-tools.

buf has no builtin for gRPC Python, so this reads the CodeGeneratorRequest,
hands its files to grpc_tools.protoc as a descriptor set, and returns what
protoc wrote. Keeps `buf generate` fully offline and independent of any
system protoc.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        descriptors = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        (root / "set.binpb").write_bytes(descriptors.SerializeToString())
        out = root / "out"
        out.mkdir()
        args = ["protoc", f"--descriptor_set_in={root / 'set.binpb'}", f"--grpc_python_out={out}"]
        if protoc.main([*args, *request.file_to_generate]) != 0:
            response.error = "grpc_tools.protoc failed"
        for path in sorted(out.rglob("*.py")):
            response.file.add(name=str(path.relative_to(out)), content=path.read_text())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
