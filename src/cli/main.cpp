// metapo: one MPI program, git-style subcommands. Every fatal error becomes one line on stderr and a
// non-zero exit; in a job of several ranks it aborts the whole job so no rank is left waiting.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <functional>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "metapo/cli/commands.h"
#include "metapo/cli/common.h"
#include "metapo/comm/mpi_session.h"
#include "metapo/core/error.h"
#include "metapo/core/threads.h"
#include "metapo/io/h5util.h"
#include "metapo/train/dpo.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  std::function<int(metapo::cli::Context&, int, char**)> run;
};

const std::vector<Command>& commands() {
  static const std::vector<Command> cmds = {
      {"init", "write a randomly initialized model directory from a preset", metapo::cli::cmd_init},
      {"score", "per-token log-probs of token sequences (JSONL in, JSONL out)", metapo::cli::cmd_score},
      {"export", "write a model as a Hugging Face directory (safetensors + config.json)",
       metapo::cli::cmd_export},
      {"bench", "time forward+backward of the summed log-probs", metapo::cli::cmd_bench},
      {"synth", "write a built-in synthetic preference dataset (sort, reverse, add)", metapo::cli::cmd_synth},
      {"sft", "supervised fine-tuning on a dataset's sft split", metapo::cli::cmd_sft},
      {"precompute-ref", "add reference log-probs to a dataset file", metapo::cli::cmd_precompute_ref},
      {"train", "preference optimization (DPO loss family, weighting)", metapo::cli::cmd_train},
      {"eval", "preference metrics of a model on a dataset split", metapo::cli::cmd_eval},
      {"generate", "completions of prompts with a KV cache (greedy or sampled)", metapo::cli::cmd_generate},
      {"plan", "memory per device by category and FLOPs per step; the layouts that fit", metapo::cli::cmd_plan},
      {"analyze", "what a MetaPO run's weight net decides: attributions, weights vs quality", metapo::cli::cmd_analyze},
  };
  return cmds;
}

void usage(std::ostream& os) {
  os << "metapo " << METAPO_VERSION
     << ": preference optimization (DPO, MetaPO) for Llama-family models\n\n"
        "usage: [mpirun -np N] metapo <command> [options]   (metapo <command> --help for options)\n\n"
        "commands:\n";
  for (const Command& c : commands())
    os << "  " << c.name << std::string(std::max<size_t>(2, 16 - std::strlen(c.name)), ' ') << c.summary << "\n";
}

// Every rank of a job must run the same command with the same options (one launched with other ones,
// an MPMD mpirun or per-node wrappers, would train on another data order, or wait forever in a
// collective of another layout): a hash of the command line, compared over the world.
void check_same_command_line(const metapo::Topology& topo, int argc, char** argv) {
  if (topo.world_size <= 1) return;
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the words, each ended by a 0 byte
  for (int i = 1; i < argc; ++i)
    for (const char* c = argv[i];; ++c) {
      h = (h ^ uint64_t(static_cast<unsigned char>(*c))) * 0x100000001b3ull;
      if (!*c) break;
    }
  uint64_t lo = h, hi = h;
  topo.world_comm().allreduce(&lo, 1, metapo::ReduceOp::Min);
  topo.world_comm().allreduce(&hi, 1, metapo::ReduceOp::Max);
  MP_CHECK(lo == hi, "the ranks of this job were started with different command lines; every rank must get the same "
           "command and options");
}

}  // namespace

int main(int argc, char** argv) {
  // Before MPI starts (which takes a while on many nodes): a SIGUSR1 or SIGTERM that a scheduler
  // sends to a starting train or sft is kept, and the run checkpoints after its first step.
  if (argc > 1 && (std::strcmp(argv[1], "train") == 0 || std::strcmp(argv[1], "sft") == 0))
    metapo::install_train_stop_handlers();
  // First, so that every communicator (ctx.topo's) is freed before MPI ends.
  metapo::MpiSession mpi(argc, argv);
  const int world = mpi.world_size(), rank = mpi.world_rank();

  int rc = 0;
  std::string cmd = argc > 1 ? argv[1] : "";
  metapo::cli::Context ctx;
  try {
    if (cmd.empty() || cmd == "--help" || cmd == "-h" || cmd == "help") {
      if (rank == 0) usage(std::cout);
      rc = cmd.empty() ? 2 : 0;
    } else if (cmd == "--version") {
      if (rank == 0) std::cout << "metapo " << METAPO_VERSION << "\n";
    } else {
      const Command* found = nullptr;
      for (const Command& c : commands())
        if (cmd == c.name) found = &c;
      MP_CHECK(found, "unknown command '", cmd, "' (metapo --help lists the commands)");
      ctx.topo = metapo::Topology::create(1, 1);
      check_same_command_line(ctx.topo, argc, argv);
      ctx.threads = metapo::configure_threads(ctx.topo.local_size);
      rc = found->run(ctx, argc - 1, argv + 1);
    }
  } catch (const std::exception& e) {
    // Bad input usually fails on every rank at once. Ranks other than 0 wait a moment before
    // reporting, so rank 0's abort usually ends them first and the user reads the error once;
    // an error only one rank sees is still reported by that rank, 3 s late. (500 ms was too short:
    // 4 oversubscribed ranks on 2 cores printed the line twice; the abort took about 1 s.)
    if (world > 1 && rank != 0) std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    // An allocation that failed names no size: say what it means.
    const std::string what = dynamic_cast<const std::bad_alloc*>(&e)
                                 ? "out of memory (std::bad_alloc): the sizes this command was given (the model, batch, "
                                   "sequence lengths) need more memory than the process can get"
                                 : e.what();
    std::cerr << "metapo" << (cmd.empty() || cmd[0] == '-' ? "" : " " + cmd) << ": error: " << what
              << (world > 1 ? " [rank " + std::to_string(rank) + "]" : "") << std::endl;
    // An error with a status of its own (a locked run directory: 75) keeps it; any other is 1.
    const auto* with_status = dynamic_cast<const metapo::ExitError*>(&e);
    rc = with_status ? with_status->status() : 1;
    if (world > 1) metapo::abort_job(rc);
  }
  // METAPO_STATUS_FILE (set by jobs/lib.sh): rank 0 writes its exit status there, so a job script can
  // tell a run that ended from a launcher that exits 0 without having started it (srun does, when a
  // step fails to launch). Written under a temporary name and renamed: the file is whole or absent.
  if (const char* status = std::getenv("METAPO_STATUS_FILE"); status && *status && rank == 0) {
    const std::string tmp = std::string(status) + ".tmp";
    if (std::FILE* f = std::fopen(tmp.c_str(), "w")) {
      std::fprintf(f, "%d\n", rc);
      if (std::fclose(f) == 0) std::rename(tmp.c_str(), status);
    }
  }
  // HDF5 failed to close a file (a full disk): ending the library would crash on it, so the process
  // ends here, without ending MPI (MpiSession's destructor, which ends HDF5 too). Its output is
  // whole; nothing is left to write.
  if (metapo::hdf5_left_unclean()) {
    std::cout.flush();
    std::fflush(nullptr);
    std::_Exit(rc);
  }
  return rc;
}
