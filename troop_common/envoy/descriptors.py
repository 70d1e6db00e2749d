"""The descriptor set Envoy's gRPC-JSON transcoder needs, built from imported modules.

Envoy must know every message a transcoded service uses, with all imports.
Rather than shipping `.proto` files or running protoc at run time, the set is
assembled from the `FileDescriptor`s the generated `*_pb2` modules already
registered when they were imported, so it works from an installed package.
`google/rpc/status.proto` and `error_details.proto` are always added: the
transcoder needs them to print a status's RetryInfo / BadRequest details.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2

_ALWAYS = (status_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR)


def service_file(full_name: str) -> FileDescriptor:
    """The file that defines a service, from the default pool (its module must be imported)."""
    return descriptor_pool.Default().FindServiceByName(full_name).file


def descriptor_set(files: Iterable[FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    """`files` and everything they import, dependencies first (as protoc's --include_imports)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for file in (*files, *_ALWAYS):
        visit(file)
    result = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        file.CopyToProto(result.file.add())
    return result


def descriptor_set_for_services(services: Iterable[str]) -> bytes:
    """The serialized descriptor set for fully qualified gRPC service names."""
    return descriptor_set(service_file(name) for name in services).SerializeToString()


__all__ = ["descriptor_set", "descriptor_set_for_services", "service_file"]
