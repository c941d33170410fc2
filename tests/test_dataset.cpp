// Dataset .h5 files: every field round-trips, write_ref_logps adds and replaces only what it should,
// each kind of damaged file gives one error naming the file, split and field, and no failed write
// leaves a file under the final name.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "metapo/core/error.h"
#include "metapo/data/dataset.h"
#include "metapo/io/dataset_h5.h"

namespace fs = std::filesystem;
using namespace metapo;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("metapo_ds_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Runs f, expects a metapo::Error whose message contains every string in `parts`.
template <typename F>
void expect_error(F f, std::vector<std::string> parts) {
  try {
    f();
    FAIL() << "no metapo::Error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message spans several lines: " << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message \"" << msg << "\" lacks \"" << p << "\"";
  }
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Ragged ragged(const std::vector<std::vector<int32_t>>& items) {
  Ragged r;
  for (const auto& v : items) r.push(v);
  return r;
}

// A dataset that uses every field: sft, a train split with quality, two columns and reference
// log-probs, a val split with only the required fields, and an empty test split.
Dataset sample_dataset() {
  Dataset d;
  d.info.tokenizer = "test-tok";
  d.info.task = "sort";
  d.info.source = "test_dataset.cpp \xc3\xa9";  // UTF-8 survives
  d.info.vocab_size = 50;
  d.info.bos_token_id = 1;
  d.info.eos_token_id = 2;
  d.info.pad_token_id = -1;
  SftSplit sft;
  sft.prompt = ragged({{1, 10, 11}, {1, 12}, {1}});
  sft.answer = ragged({{20, 2}, {21, 22, 2}, {}});
  sft.sample_id = {100, 101, 102};
  d.sft = sft;
  PairSplit& tr = d.pairs["train"];
  tr.prompt = ragged({{1, 5, 6}, {1, 7}, {1, 8, 9, 10}, {1}});
  tr.chosen = ragged({{30, 2}, {31, 32, 2}, {49, 2}, {2}});
  tr.rejected = ragged({{33, 2}, {34, 2}, {0, 0, 0, 2}, {40, 41, 2}});
  tr.sample_id = {0, 1, 2, 3};
  tr.quality = {1.0f, 0.0f, 0.5f, 1.0f};
  tr.columns["difficulty"] = {1, 0, 1, 0};
  tr.columns["weight"] = {0.25f, 1.5f, -2.0f, 3.0f};
  tr.ref_logp_chosen = {-1.5, -2.25, -0.125, -1e-300};
  tr.ref_logp_rejected = {-3.0, -4.0, -5.5, -6.0};
  tr.ref_model = "models/ref";
  tr.ref_max_length = 512;
  PairSplit& va = d.pairs["val"];
  va.prompt = ragged({{1, 3}, {1, 4}});
  va.chosen = ragged({{11, 2}, {12, 2}});
  va.rejected = ragged({{13, 2}, {14, 14, 2}});
  va.sample_id = {10, 11};
  d.pairs["test"] = PairSplit{};  // N = 0: offsets [0], empty arrays
  return d;
}

void expect_same(const Ragged& a, const Ragged& b, const std::string& what) {
  EXPECT_EQ(a.tokens, b.tokens) << what;
  EXPECT_EQ(a.offsets, b.offsets) << what;
}

void expect_same(const PairSplit& a, const PairSplit& b, const std::string& split) {
  expect_same(a.prompt, b.prompt, split + " prompt");
  expect_same(a.chosen, b.chosen, split + " chosen");
  expect_same(a.rejected, b.rejected, split + " rejected");
  EXPECT_EQ(a.sample_id, b.sample_id) << split;
  EXPECT_EQ(a.quality, b.quality) << split;
  EXPECT_EQ(a.columns, b.columns) << split;
  EXPECT_EQ(a.ref_logp_chosen, b.ref_logp_chosen) << split;  // float64 on disk: exact
  EXPECT_EQ(a.ref_logp_rejected, b.ref_logp_rejected) << split;
  EXPECT_EQ(a.ref_model, b.ref_model) << split;
  EXPECT_EQ(a.ref_max_length, b.ref_max_length) << split;
}

void expect_same(const DatasetInfo& a, const DatasetInfo& b) {
  EXPECT_EQ(a.format_version, b.format_version);
  EXPECT_EQ(a.tokenizer, b.tokenizer);
  EXPECT_EQ(a.task, b.task);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
}

// ---- raw HDF5 edits, to build files the writer would never produce ----

struct File {
  hid_t id;
  explicit File(const std::string& path) : id(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)) {
    EXPECT_GE(id, 0) << path;
  }
  ~File() { H5Fclose(id); }
};

void delete_link(const std::string& path, const std::string& name) {
  File f(path);
  ASSERT_GE(H5Ldelete(f.id, name.c_str(), H5P_DEFAULT), 0) << name;
}

void delete_attr(const std::string& path, const std::string& obj, const std::string& name) {
  File f(path);
  ASSERT_GE(H5Adelete_by_name(f.id, obj.c_str(), name.c_str(), H5P_DEFAULT), 0) << name;
}

void set_int_attr(const std::string& path, const std::string& name, int64_t v) {
  File f(path);
  H5Adelete(f.id, name.c_str());
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f.id, name.c_str(), H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, &v);
  H5Aclose(a);
  H5Sclose(s);
}

// A fixed-length, null-padded ASCII string, as some writers (not h5py) store them.
void set_fixed_string_attr(const std::string& path, const std::string& name, const std::string& v) {
  File f(path);
  H5Adelete(f.id, name.c_str());
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, v.size());
  H5Tset_strpad(t, H5T_STR_NULLPAD);
  hid_t s = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f.id, name.c_str(), t, s, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(a, t, v.data());
  H5Aclose(a);
  H5Sclose(s);
  H5Tclose(t);
}

// Replaces dataset `name` by a 1-D (or dims-shaped) dataset of the given file type.
template <typename T>
void put(const std::string& path, const std::string& name, const std::vector<T>& v, hid_t ftype, hid_t mtype,
         std::vector<hsize_t> dims = {}) {
  File f(path);
  if (H5Lexists(f.id, name.c_str(), H5P_DEFAULT) > 0) H5Ldelete(f.id, name.c_str(), H5P_DEFAULT);
  if (dims.empty()) dims = {v.size()};
  hid_t s = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(f.id, name.c_str(), ftype, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(d, 0) << name;
  if (!v.empty()) H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
  H5Dclose(d);
  H5Sclose(s);
}
void put_i64(const std::string& path, const std::string& name, const std::vector<int64_t>& v) {
  put(path, name, v, H5T_STD_I64LE, H5T_NATIVE_INT64);
}
void put_i32(const std::string& path, const std::string& name, const std::vector<int32_t>& v) {
  put(path, name, v, H5T_STD_I32LE, H5T_NATIVE_INT32);
}

// A valid file to damage: sample_dataset() written to dir/data.h5.
std::string good_file(const TempDir& tmp) {
  const std::string path = tmp / "data.h5";
  write_dataset(path, sample_dataset());
  return path;
}

}  // namespace

TEST(Dataset, RaggedItems) {
  Ragged r = ragged({{1, 2, 3}, {}, {4}});
  EXPECT_EQ(r.size(), 3);
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 3, 3, 4}));
  EXPECT_EQ(r.len(0), 3);
  EXPECT_EQ(r.len(1), 0);
  EXPECT_EQ(r.item(2), (std::vector<int32_t>{4}));
  EXPECT_EQ(r.data(2)[0], 4);
  EXPECT_EQ(Ragged{}.size(), 0);
}

TEST(Dataset, RoundTripEveryField) {
  TempDir tmp;
  const Dataset d = sample_dataset();
  const std::string path = tmp / "sub/dir/data.h5";  // parent directories are created
  write_dataset(path, d);
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".partial"));

  const Dataset r = read_dataset(path);
  expect_same(r.info, d.info);
  ASSERT_TRUE(r.sft.has_value());
  expect_same(r.sft->prompt, d.sft->prompt, "sft prompt");
  expect_same(r.sft->answer, d.sft->answer, "sft answer");
  EXPECT_EQ(r.sft->sample_id, d.sft->sample_id);
  ASSERT_EQ(r.pairs.size(), 3u);
  for (const auto& [name, s] : d.pairs) {
    ASSERT_TRUE(r.pairs.count(name)) << name;
    expect_same(r.pairs.at(name), s, name);
  }
  EXPECT_TRUE(r.pairs.at("train").has_ref());
  EXPECT_FALSE(r.pairs.at("val").has_ref());
  EXPECT_TRUE(r.pairs.at("val").quality.empty());
  EXPECT_EQ(r.pairs.at("test").size(), 0);

  // The one-split readers return the same.
  expect_same(read_pair_split(path, "train"), d.pairs.at("train"), "train");
  expect_same(read_pair_split(path, "val"), d.pairs.at("val"), "val");
  EXPECT_EQ(read_sft_split(path).sample_id, d.sft->sample_id);
  expect_same(read_dataset_info(path), d.info);

  // Same dataset, same bytes (no timestamps in the file), and an existing file is replaced.
  const std::string again = tmp / "again.h5";
  write_dataset(again, d);
  EXPECT_EQ(file_bytes(again), file_bytes(path));
  Dataset smaller = d;
  smaller.pairs.erase("test");
  write_dataset(again, smaller);
  EXPECT_EQ(read_dataset(again).pairs.count("test"), 0u);
}

TEST(Dataset, ReadsFixedLengthStringAttributes) {
  TempDir tmp;
  const std::string path = good_file(tmp);
  set_fixed_string_attr(path, "tokenizer", "fixed-len-tok");
  set_fixed_string_attr(path, "task", "");
  EXPECT_EQ(read_dataset_info(path).tokenizer, "fixed-len-tok");
  EXPECT_EQ(read_dataset_info(path).task, "");
}

TEST(Dataset, WriteRefLogpsAddsAndKeepsTheRest) {
  TempDir tmp;
  Dataset d = sample_dataset();
  d.pairs["train"].ref_logp_chosen.clear();
  d.pairs["train"].ref_logp_rejected.clear();
  d.pairs["train"].ref_model.clear();
  d.pairs["train"].ref_max_length = 0;
  const std::string path = tmp / "data.h5";
  write_dataset(path, d);
  EXPECT_FALSE(read_pair_split(path, "train").has_ref());

  write_ref_logps(path, {{"train", {{-1, -2, -3, -4}, {-5, -6, -7, -8}}}, {"val", {{-0.5, -0.25}, {-9, -10}}}},
                  "ref/model", 256);
  EXPECT_FALSE(fs::exists(path + ".partial"));
  Dataset r = read_dataset(path);
  const PairSplit& tr = r.pairs.at("train");
  EXPECT_EQ(tr.ref_logp_chosen, (std::vector<double>{-1, -2, -3, -4}));
  EXPECT_EQ(tr.ref_logp_rejected, (std::vector<double>{-5, -6, -7, -8}));
  EXPECT_EQ(tr.ref_model, "ref/model");
  EXPECT_EQ(tr.ref_max_length, 256);
  EXPECT_EQ(r.pairs.at("val").ref_logp_chosen, (std::vector<double>{-0.5, -0.25}));
  // Everything else is as written.
  for (const auto& [name, s] : d.pairs) {
    PairSplit got = r.pairs.at(name);
    got.ref_logp_chosen.clear(), got.ref_logp_rejected.clear(), got.ref_model.clear(), got.ref_max_length = 0;
    expect_same(got, s, name);
  }
  EXPECT_EQ(r.sft->answer.tokens, d.sft->answer.tokens);
  expect_same(r.info, d.info);

  // Running it again replaces the values.
  write_ref_logps(path, {{"train", {{-11, -12, -13, -14}, {-15, -16, -17, -18}}}}, "ref2", 128);
  const PairSplit tr2 = read_pair_split(path, "train");
  EXPECT_EQ(tr2.ref_logp_chosen, (std::vector<double>{-11, -12, -13, -14}));
  EXPECT_EQ(tr2.ref_model, "ref2");
  EXPECT_EQ(tr2.ref_max_length, 128);
  EXPECT_EQ(read_pair_split(path, "val").ref_model, "ref/model");  // untouched split keeps its own
}

TEST(Dataset, WriteRefLogpsRerunDoesNotGrowTheFile) {
  // HDF5 never reuses the space of a deleted dataset, so a rerun of precompute-ref must overwrite the
  // arrays in place. 20000 pairs: 320 KB of reference log-probs per rerun if it did not.
  TempDir tmp;
  Dataset d;
  d.info.vocab_size = 8;
  PairSplit& s = d.pairs["train"];
  const int64_t n = 20000;
  for (int64_t i = 0; i < n; ++i) {
    s.prompt.push({1});
    s.chosen.push({2});
    s.rejected.push({3});
    s.sample_id.push_back(i);
  }
  const std::string path = tmp / "big.h5";
  write_dataset(path, d);
  std::vector<double> c(size_t(n), -1.0), r(size_t(n), -2.0);
  write_ref_logps(path, {{"train", {c, r}}}, "m", 64);
  const auto size = fs::file_size(path);
  for (int rerun = 0; rerun < 3; ++rerun) {
    c[0] = -3.0 - rerun;
    write_ref_logps(path, {{"train", {c, r}}}, "m", 64);
  }
  // A few KB per rerun for HDF5's metadata blocks and the rewritten attributes; far below 320 KB.
  EXPECT_LT(fs::file_size(path), size + 3 * 16384);
  EXPECT_EQ(read_pair_split(path, "train").ref_logp_chosen[0], -5.0);
}

TEST(Dataset, WriteRefLogpsRejectsBadInputAndKeepsTheFile) {
  TempDir tmp;
  const std::string path = good_file(tmp);
  const std::string before = file_bytes(path);
  expect_error([&] { write_ref_logps(path, {{"val", {{-1}, {-2, -3}}}}, "m", 8); },
               {path, "/val/ref_logp_chosen", "1 values, expected N = 2"});
  expect_error([&] { write_ref_logps(path, {{"val", {{-1, NAN}, {-2, -3}}}}, "m", 8); },
               {path, "/val/ref_logp_chosen", "index 1", "not finite"});
  expect_error([&] { write_ref_logps(path, {{"dev", {{-1}, {-2}}}}, "m", 8); },
               {path, "no split 'dev'", "sft, test, train, val"});
  expect_error([&] { write_ref_logps(path, {{"sft", {{-1}, {-2}}}}, "m", 8); }, {path, "sft"});
  expect_error([&] { write_ref_logps(tmp / "nofile.h5", {{"val", {{-1}, {-2}}}}, "m", 8); },
               {"nofile.h5", "no such file"});
  EXPECT_EQ(file_bytes(path), before);
  EXPECT_FALSE(fs::exists(path + ".partial"));
}

TEST(Dataset, MissingOrWrongRootAttributes) {
  TempDir tmp;
  std::string path = good_file(tmp);
  delete_attr(path, ".", "vocab_size");
  expect_error([&] { read_dataset(path); }, {path, "root attribute vocab_size", "missing"});
  expect_error([&] { read_pair_split(path, "train"); }, {path, "vocab_size", "missing"});

  path = good_file(tmp);
  set_int_attr(path, "format_version", 2);
  expect_error([&] { read_dataset_info(path); }, {path, "format_version 2", "not supported"});

  path = good_file(tmp);
  set_fixed_string_attr(path, "format", "something-else");
  expect_error([&] { read_dataset(path); }, {path, "format", "'something-else'", "metapo-dataset"});

  path = good_file(tmp);
  set_int_attr(path, "eos_token_id", 50);
  expect_error([&] { read_dataset(path); }, {path, "eos_token_id 50", "vocab_size = 50"});

  path = good_file(tmp);
  set_int_attr(path, "task", 3);  // a string attribute stored as a number
  expect_error([&] { read_dataset(path); }, {path, "task", "expected a string"});
}

TEST(Dataset, BadOffsetsNameTheField) {
  TempDir tmp;
  std::string path = good_file(tmp);
  // train chosen_tokens has 9 tokens; claim 120.
  put_i64(path, "/train/chosen_offsets", {0, 2, 5, 7, 120});
  expect_error([&] { read_dataset(path); }, {path, "/train/chosen_offsets: last offset 120 != chosen_tokens length 8"});
  expect_error([&] { read_pair_split(path, "train"); }, {path, "/train/chosen_offsets", "last offset 120"});

  path = good_file(tmp);
  put_i64(path, "/train/prompt_offsets", {0, 3, 2, 9, 10});
  expect_error([&] { read_dataset(path); }, {path, "/train/prompt_offsets", "decrease at index 2"});

  path = good_file(tmp);
  put_i64(path, "/val/rejected_offsets", {1, 3, 6});
  expect_error([&] { read_dataset(path); }, {path, "/val/rejected_offsets", "first offset is 1"});

  path = good_file(tmp);
  put_i64(path, "/val/chosen_offsets", {0, 2});  // N + 1 = 3 expected
  expect_error([&] { read_dataset(path); }, {path, "/val/chosen_offsets", "2 entries, expected N + 1 = 3"});

  path = good_file(tmp);
  put_i64(path, "/sft/answer_offsets", {});
  expect_error([&] { read_sft_split(path); }, {path, "/sft/answer_offsets", "empty"});
}

TEST(Dataset, TokenIdsOutsideTheVocabulary) {
  TempDir tmp;
  std::string path = good_file(tmp);
  put_i32(path, "/train/rejected_tokens", {33, 2, 34, 2, 0, 0, 50, 2, 40, 41, 2});
  expect_error([&] { read_dataset(path); },
               {path, "/train/rejected_tokens", "token id 50 at index 6", "vocab_size = 50"});
  path = good_file(tmp);
  put_i32(path, "/sft/prompt_tokens", {1, 10, -3, 1, 12, 1});
  expect_error([&] { read_sft_split(path); }, {path, "/sft/prompt_tokens", "token id -3"});
}

TEST(Dataset, WrongTypeShapeOrMissingField) {
  TempDir tmp;
  std::string path = good_file(tmp);
  put(path, "/train/chosen_tokens", std::vector<int64_t>{30, 2, 31, 32, 2, 49, 2, 2, 0}, H5T_STD_I64LE,
      H5T_NATIVE_INT64);
  expect_error([&] { read_dataset(path); }, {path, "/train/chosen_tokens", "stored as int64, expected int32"});

  path = good_file(tmp);
  put(path, "/train/quality", std::vector<double>{1, 0, 1, 1}, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE);
  expect_error([&] { read_dataset(path); }, {path, "/train/quality", "stored as float64, expected float32"});

  path = good_file(tmp);
  put(path, "/val/sample_id", std::vector<int64_t>{10, 11}, H5T_STD_I64LE, H5T_NATIVE_INT64, {1, 2});
  expect_error([&] { read_dataset(path); }, {path, "/val/sample_id", "1-D"});

  path = good_file(tmp);
  delete_link(path, "/val/sample_id");
  expect_error([&] { read_dataset(path); }, {path, "/val/sample_id: missing"});

  path = good_file(tmp);
  delete_link(path, "/train/ref_logp_rejected");
  expect_error([&] { read_pair_split(path, "train"); }, {path, "/train/ref_logp_rejected", "missing"});

  path = good_file(tmp);
  put(path, "/train/columns/weight", std::vector<float>{1, 2, 3}, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT);
  expect_error([&] { read_dataset(path); }, {path, "/train/columns/weight", "3 values, expected N = 4"});
}

TEST(Dataset, SampleIdsMustBeUnique) {
  TempDir tmp;
  std::string path = good_file(tmp);
  put_i64(path, "/val/sample_id", {7, 7});
  expect_error([&] { read_pair_split(path, "val"); }, {path, "/val/sample_id", "id 7"});
  path = good_file(tmp);
  put_i64(path, "/val/sample_id", {10, 2});  // 2 is also a train id
  EXPECT_NO_THROW(read_pair_split(path, "val"));  // a one-split read cannot see the clash
  expect_error([&] { read_dataset(path); }, {path, "sample_id", "id 2", "/train/", "/val/"});
  // Ids index MetaPO's pair table: a negative one is refused when read, not at its first fetch.
  path = good_file(tmp);
  put_i64(path, "/val/sample_id", {10, -7});
  expect_error([&] { read_pair_split(path, "val"); }, {path, "/val/sample_id: id -7 is negative"});
}

TEST(Dataset, EmptyResponsesAreRefused) {
  TempDir tmp;
  std::string path = good_file(tmp);
  put_i64(path, "/train/chosen_offsets", {0, 2, 2, 7, 8});  // pair 1's chosen response has no tokens
  expect_error([&] { read_pair_split(path, "train"); },
               {path, "/train/chosen: the response of pair 1 (sample_id 1) is empty"});
  expect_error([&] { read_dataset(path); }, {path, "/train/chosen", "pair 1", "empty"});
}

TEST(Dataset, MissingSplitListsThePresentOnes) {
  TempDir tmp;
  const std::string path = good_file(tmp);
  expect_error([&] { read_pair_split(path, "dev"); }, {path, "no split 'dev'", "sft, test, train, val"});
  expect_error([&] { read_pair_split(path, "sft"); }, {path, "SFT split"});
  Dataset d = sample_dataset();
  d.sft.reset();
  const std::string nosft = tmp / "nosft.h5";
  write_dataset(nosft, d);
  expect_error([&] { read_sft_split(nosft); }, {nosft, "no split 'sft'", "test, train, val"});
  EXPECT_FALSE(read_dataset(nosft).sft.has_value());
}

TEST(Dataset, NotADatasetFile) {
  TempDir tmp;
  expect_error([&] { read_dataset(tmp / "nope.h5"); }, {"nope.h5", "no such file"});
  const std::string txt = tmp / "text.h5";
  std::ofstream(txt) << "not hdf5";
  expect_error([&] { read_dataset_info(txt); }, {txt, "not an HDF5 file"});
  // A truncated file: the signature is there, the rest is not.
  const std::string path = good_file(tmp);
  fs::resize_file(path, 1000);
  expect_error([&] { read_dataset(path); }, {path});
}

TEST(Dataset, FailedWritesLeaveNothing) {
  TempDir tmp;
  // A parent "directory" that is a regular file: unwritable for any user, root included.
  const std::string blocker = tmp / "blocker";
  std::ofstream(blocker) << "x";
  const std::string path = blocker + "/data.h5";
  expect_error([&] { write_dataset(path, sample_dataset()); }, {path});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".partial"));

  // A read-only directory (only meaningful when not running as root).
  if (geteuid() != 0) {
    const std::string ro = tmp / "ro";
    fs::create_directories(ro);
    fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { write_dataset(ro + "/data.h5", sample_dataset()); }, {ro + "/data.h5", "cannot create"});
    EXPECT_TRUE(fs::is_empty(ro));
    fs::permissions(ro, fs::perms::owner_all);
  }

  // An invalid dataset is refused before anything is written; an earlier file survives intact.
  const std::string good = good_file(tmp);
  const std::string before = file_bytes(good);
  Dataset bad = sample_dataset();
  bad.pairs["train"].chosen.offsets.back() = 120;
  expect_error([&] { write_dataset(good, bad); }, {good, "/train/chosen_offsets", "last offset 120"});
  bad = sample_dataset();
  bad.pairs["train"].ref_logp_rejected.clear();
  expect_error([&] { write_dataset(good, bad); }, {good, "/train/ref_logp_rejected", "missing"});
  bad = sample_dataset();
  bad.pairs["sft"] = PairSplit{};
  expect_error([&] { write_dataset(good, bad); }, {good, "'sft'"});
  bad = sample_dataset();
  bad.pairs["val"].sample_id = {10, 100};  // 100 is an sft id
  expect_error([&] { write_dataset(good, bad); }, {good, "id 100", "/sft/", "/val/"});
  EXPECT_EQ(file_bytes(good), before);
  EXPECT_FALSE(fs::exists(good + ".partial"));
}
