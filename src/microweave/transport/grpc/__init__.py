"""Native gRPC: the transport the world speaks (grpcurl, go-micro's grpc client, any stub)."""

from .client import GrpcClient
from .server import MAX_MESSAGE, GrpcServer

__all__ = ["MAX_MESSAGE", "GrpcClient", "GrpcServer"]
