// The process grid: world = DP x PP x TP, TP innermost (the ranks of a tensor-parallel group are
// adjacent, so on one node). Each axis has its own communicator from MPI_Comm_split.
#pragma once
#include <mpi.h>

namespace metapo {

struct Topology {
  int world_size = 1, world_rank = 0;
  int tp = 1, pp = 1, dp = 1;              // group sizes
  int tp_rank = 0, pp_rank = 0, dp_rank = 0;
  int local_size = 1, local_rank = 0;      // ranks on this node (for thread counts)
  MPI_Comm world = MPI_COMM_WORLD, tp_comm = MPI_COMM_NULL, pp_comm = MPI_COMM_NULL,
           dp_comm = MPI_COMM_NULL;

  // Splits MPI_COMM_WORLD; throws metapo::Error naming the options when world % (tp*pp) != 0.
  static Topology create(int tp, int pp);
  void free();
  bool is_root() const { return world_rank == 0; }
};

}  // namespace metapo
