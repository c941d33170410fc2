// The parallel model writer (io/hf_model.h save_hf_model_parallel) over several ranks: run by
// tests/cli/hf_save_mpi.sh under `mpirun -np 2, 3, 4`. Each rank writes only its part of the model;
// the result must be the bytes save_hf_model writes from the whole buffer in one process (one file),
// whatever the split (contiguous windows, a random partition, a tensor-parallel shard map with its
// replicated norms); with a small file limit, several files and an index that the reader reads back
// bit for bit; and a split that leaves parameters out fails on every rank, leaving nothing behind.
// Run bare (as CTest's discovery does), the tests skip.
#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"
#include "metapo/core/half.h"
#include "metapo/core/rng.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/layout.h"
#include "metapo/model/tp_layout.h"
#include "mpi_test_env.h"

using namespace metapo;
using metapo::testing_mpi::all_ranks;
using metapo::testing_mpi::world_rank;
using metapo::testing_mpi::world_size;
using std::vector;
namespace fs = std::filesystem;

namespace {

// MPI_COMM_WORLD as a Comm (made on first use, after MPI is up).
MpiComm& world() {
  static MpiComm w(MPI_COMM_WORLD);
  return w;
}

// GQA, untied, 3 layers: 2 KV heads, so TP 2 applies.
LlamaConfig small() {
  LlamaConfig c;
  c.model_type = "llama";
  c.vocab_size = 50, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 3;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 8;
  c.max_position_embeddings = 64, c.rms_norm_eps = 1e-5, c.rope_theta = 10000.0;
  c.bos_token_id = 1, c.eos_token_id = 2;
  return c;
}

vector<float> params_of(const LlamaConfig& c) {
  Philox r = make_rng(21, 0, 0, RngPurpose::Bench);
  vector<float> p(ParamLayout(c).total());
  for (float& x : p) x = float(0.1 * (2.0 * r.uniform() - 1.0));
  return p;
}

std::string bytes_of(const fs::path& f) {
  std::ifstream in(f, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A directory name every rank agrees on, in the test's working directory (the CLI script's temp dir).
std::string shared_dir(const std::string& stem) {
  return stem + "-" + std::to_string(world_size()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

// This rank's window [r n / P, (r + 1) n / P) of the flat buffer, as runs into a buffer holding it all.
vector<TpCopy> window(size_t n, int rank, int ranks) {
  const size_t lo = n * size_t(rank) / size_t(ranks), hi = n * size_t(rank + 1) / size_t(ranks);
  return {{lo, lo, hi - lo, false}};
}

// The same random partition of [0, n) on every rank, pieces dealt to random ranks.
vector<TpCopy> partition(size_t n, int rank, int ranks) {
  Philox r = make_rng(5, 1, 0, RngPurpose::Bench);
  vector<size_t> cuts = {0, n};
  for (int k = 0; k < 40; ++k) cuts.push_back(size_t(r.uniform() * double(n)));
  std::sort(cuts.begin(), cuts.end());
  vector<TpCopy> runs;
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    const int owner = int(r.uniform() * ranks) % ranks;
    if (owner == rank && cuts[k + 1] > cuts[k]) runs.push_back({cuts[k], cuts[k], cuts[k + 1] - cuts[k], false});
  }
  return runs;
}

}  // namespace

TEST(HfSaveMpi, AnySplitWritesTheBytesOfTheOneProcessWriter) {
  REQUIRE_MPI("tests/cli/hf_save_mpi.sh");
  const LlamaConfig c = small();
  const vector<float> p = params_of(c);
  const std::string ref = shared_dir("ref"), dir = shared_dir("par");
  for (const char* dtype : {"float32", "bfloat16"}) {
    if (world_rank() == 0) save_hf_model(ref, c, p, dtype);
    for (int split = 0; split < 2; ++split) {
      const vector<TpCopy> runs = split == 0 ? window(p.size(), world_rank(), world_size())
                                             : partition(p.size(), world_rank(), world_size());
      save_hf_model_parallel(dir, c, runs, true, p.data(), dtype, world());
      MPI_Barrier(MPI_COMM_WORLD);
      bool same = true;
      for (const char* f : {"model.safetensors", "config.json", "generation_config.json"})
        same = same && bytes_of(fs::path(dir) / f) == bytes_of(fs::path(ref) / f);
      EXPECT_TRUE(all_ranks(same)) << dtype << ", split " << split;
      EXPECT_FALSE(fs::exists(dir + ".partial"));
      MPI_Barrier(MPI_COMM_WORLD);  // every rank has looked before rank 0 starts the next write
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(ref), fs::remove_all(dir);
}

// Tensor parallelism: ranks 0 and 1 are one replica at TP 2 and write their shards (the norms from TP
// rank 0 only); the bytes must again be the one-process writer's.
TEST(HfSaveMpi, TensorParallelShardsWithReplicatedNormsWriteTheSameBytes) {
  REQUIRE_MPI("tests/cli/hf_save_mpi.sh");
  const LlamaConfig c = small();
  const vector<float> p = params_of(c);
  const int rank = world_rank();
  MPI_Comm replica;
  MPI_Comm_split(MPI_COMM_WORLD, rank < 2 ? 0 : 1, rank, &replica);
  const std::string ref = shared_dir("ref"), dir = shared_dir("tp");
  if (rank == 0) save_hf_model(ref, c, p, "float32");
  if (rank < 2) {
    const vector<TpCopy> map = tp_shard_map(c, 2, rank);
    vector<float> local(ParamLayout(tp_local_config(c, 2)).total());
    shard_split(map, local.size(), p.data(), local.data());
    MpiComm rc(replica);
    save_hf_model_parallel(dir, c, map, rank == 0, local.data(), "float32", rc);
  }
  MPI_Comm_free(&replica);
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_TRUE(all_ranks(bytes_of(fs::path(dir) / "model.safetensors") == bytes_of(fs::path(ref) / "model.safetensors")));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(ref), fs::remove_all(dir);
}

TEST(HfSaveMpi, SeveralFilesAndAnIndexReadBackBitForBit) {
  REQUIRE_MPI("tests/cli/hf_save_mpi.sh");
  const LlamaConfig c = small();
  const vector<float> p = params_of(c);
  const std::string dir = shared_dir("multi");
  const uint64_t limit = 12000;  // bytes: a few tensors per file
  const HfFilePlan plan = plan_hf_files(c, "float32", limit);
  ASSERT_GT(plan.files.size(), 3u);
  for (const HfFilePlan::File& f : plan.files) EXPECT_NE(f.name, "model.safetensors");
  save_hf_model_parallel(dir, c, partition(p.size(), world_rank(), world_size()), true, p.data(), "float32",
                         world(), limit);
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  const vector<float> back = load_hf_model(dir).params;
  EXPECT_TRUE(all_ranks(back == p));
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

TEST(HfSaveMpi, APartMissingFailsOnEveryRankAndLeavesNothing) {
  REQUIRE_MPI("tests/cli/hf_save_mpi.sh");
  const LlamaConfig c = small();
  const vector<float> p = params_of(c);
  const std::string dir = shared_dir("gap");
  vector<TpCopy> runs = window(p.size(), world_rank(), world_size());
  if (world_rank() == world_size() - 1) runs[0].count -= 3;  // three parameters nobody writes
  std::string msg;
  try {
    save_hf_model_parallel(dir, c, runs, true, p.data(), "float32", world());
  } catch (const Error& e) {
    msg = e.what();
  }
  EXPECT_TRUE(all_ranks(msg.find("wrote " + std::to_string(p.size() - 3) + " of the model's " + std::to_string(p.size())) !=
                        std::string::npos))
      << msg;
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(fs::exists(dir + ".partial"));
}
