#include "metapo/comm/collectives.h"

#include <cstdint>
#include <vector>

namespace metapo {

namespace {

template <typename T>
void allreduce_identical(T* data, size_t n, MPI_Comm comm, MPI_Datatype type) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  if (size == 1 || n == 0) return;
  std::vector<int> counts(static_cast<size_t>(size)), displs(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    const size_t b = n * size_t(r) / size_t(size), e = n * size_t(r + 1) / size_t(size);
    counts[size_t(r)] = int(e - b), displs[size_t(r)] = int(b);
  }
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  std::vector<T> mine(static_cast<size_t>(counts[size_t(rank)]));
  MPI_Reduce_scatter(data, mine.data(), counts.data(), type, MPI_SUM, comm);
  MPI_Allgatherv(mine.data(), counts[size_t(rank)], type, data, counts.data(), displs.data(), type, comm);
}

}  // namespace

void allreduce_sum(float* data, size_t n, MPI_Comm comm) { allreduce_identical(data, n, comm, MPI_FLOAT); }
void allreduce_sum(double* data, size_t n, MPI_Comm comm) { allreduce_identical(data, n, comm, MPI_DOUBLE); }

std::string bcast_string(std::string s, int root, MPI_Comm comm) {
  int64_t n = int64_t(s.size());
  MPI_Bcast(&n, 1, MPI_INT64_T, root, comm);
  s.resize(size_t(n));
  MPI_Bcast(s.data(), int(n), MPI_CHAR, root, comm);
  return s;
}

}  // namespace metapo
