// Collectives on host buffers over an MPI communicator.
#pragma once
#include <mpi.h>

#include <cstddef>
#include <string>

namespace metapo {

// In-place sum over comm whose result is bit-identical on every rank: reduce-scatter (each chunk
// summed by its owner in rank order) then all-gather. A plain MPI_Allreduce may combine in a
// different order on different ranks, which would let data-parallel replicas drift apart.
void allreduce_sum(float* data, size_t n, MPI_Comm comm);
void allreduce_sum(double* data, size_t n, MPI_Comm comm);

// Collective over comm: root's string s to every rank (returned; s is ignored elsewhere).
std::string bcast_string(std::string s, int root, MPI_Comm comm);

}  // namespace metapo
