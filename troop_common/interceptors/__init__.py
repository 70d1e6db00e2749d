"""Server interceptors shared by every Troop gRPC server."""
