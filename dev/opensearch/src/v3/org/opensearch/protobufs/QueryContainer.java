package org.opensearch.protobufs;

/** Stand-in for the gRPC protobuf type (not on Maven Central) that k-NN 3.x names in its gRPC converter's signatures. */
public final class QueryContainer {
    private QueryContainer() {}

    /** The one constant k-NN's converter reads. */
    public enum QueryContainerCase { KNN }
}
