#include "metapo/comm/topology.h"

#include "metapo/core/error.h"

namespace metapo {

Topology Topology::create(int tp, int pp) {
  Topology t;
  MPI_Comm_size(MPI_COMM_WORLD, &t.world_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &t.world_rank);
  MP_CHECK(tp >= 1 && pp >= 1, "--tp and --pp must be at least 1 (got tp=", tp, ", pp=", pp, ")");
  MP_CHECK(t.world_size % (tp * pp) == 0, "world size ", t.world_size,
           " is not divisible by --tp x --pp = ", tp * pp);
  t.tp = tp, t.pp = pp, t.dp = t.world_size / (tp * pp);
  // rank = (dp_rank * pp + pp_rank) * tp + tp_rank
  t.tp_rank = t.world_rank % tp;
  t.pp_rank = (t.world_rank / tp) % pp;
  t.dp_rank = t.world_rank / (tp * pp);
  MPI_Comm_split(MPI_COMM_WORLD, t.dp_rank * pp + t.pp_rank, t.tp_rank, &t.tp_comm);
  MPI_Comm_split(MPI_COMM_WORLD, t.dp_rank * tp + t.tp_rank, t.pp_rank, &t.pp_comm);
  MPI_Comm_split(MPI_COMM_WORLD, t.pp_rank * tp + t.tp_rank, t.dp_rank, &t.dp_comm);
  MPI_Comm_split(MPI_COMM_WORLD, t.dp_rank, t.pp_rank * tp + t.tp_rank, &t.mp_comm);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t.world_rank, MPI_INFO_NULL, &node);
  MPI_Comm_size(node, &t.local_size);
  MPI_Comm_rank(node, &t.local_rank);
  MPI_Comm_free(&node);
  return t;
}

void Topology::free() {
  for (MPI_Comm* c : {&tp_comm, &pp_comm, &dp_comm, &mp_comm})
    if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
}

}  // namespace metapo
