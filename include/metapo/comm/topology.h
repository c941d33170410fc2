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
  // The ranks of one model replica (its PP x TP ranks, ordered pp_rank * tp + tp_rank): where a
  // replica's shards are assembled and its gradient norm summed.
  MPI_Comm mp_comm = MPI_COMM_NULL;
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp - 1; }
  // The rank that writes what only the last pipeline stage knows (MetaPO's state): DP 0, TP 0 there.
  bool is_last_stage_root() const { return dp_rank == 0 && tp_rank == 0 && last_stage(); }

  // Splits MPI_COMM_WORLD; throws metapo::Error naming the options when world % (tp*pp) != 0.
  static Topology create(int tp, int pp);
  void free();
  bool is_root() const { return world_rank == 0; }
};

}  // namespace metapo
