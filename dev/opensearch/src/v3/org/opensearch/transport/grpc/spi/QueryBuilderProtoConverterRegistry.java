package org.opensearch.transport.grpc.spi;

/** Stand-in for the transport-grpc SPI (not on Maven Central): k-NN 3.x only needs the type to load. */
public interface QueryBuilderProtoConverterRegistry {}
