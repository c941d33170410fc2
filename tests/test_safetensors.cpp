// safetensors reader/writer: bit-exact round trips, header layout, and one clear error per kind of
// damaged file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "metapo/core/error.h"
#include "metapo/core/half.h"
#include "metapo/core/progress.h"
#include "metapo/io/safetensors.h"

namespace fs = std::filesystem;
using namespace metapo;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("metapo_st_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Writes a file byte by byte, so the tests can build headers the writer would never produce.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
  out << header << data;
}

// Runs f, expects a metapo::Error whose message contains every string in `parts`.
template <typename F>
void expect_error(F f, std::vector<std::string> parts) {
  try {
    f();
    FAIL() << "no metapo::Error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << p << "\"";
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

}  // namespace

TEST(Safetensors, RoundTripF32BitIdentical) {
  TempDir tmp;
  auto a = random_floats(6 * 5, 1);
  a[0] = -0.0f;
  a[1] = std::numeric_limits<float>::infinity();
  a[2] = std::numeric_limits<float>::denorm_min();
  a[3] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> scalar = {3.25f};
  const std::string path = tmp / "t.safetensors";
  write_safetensors(path, {{"a", {6, 5}, a.data()}, {"s", {}, scalar.data()}, {"empty", {0, 3}, nullptr}},
                    "F32");
  EXPECT_FALSE(fs::exists(path + ".partial"));

  SafetensorsReader r(path);
  ASSERT_EQ(r.tensors().size(), 3u);
  const SafetensorsEntry* e = r.find("a");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, "F32");
  EXPECT_EQ(e->shape, (std::vector<int64_t>{6, 5}));
  EXPECT_EQ(e->numel, 30u);
  EXPECT_TRUE(same_bits(r.read("a"), a));
  EXPECT_TRUE(same_bits(r.read("s"), scalar));
  EXPECT_TRUE(r.read("empty").empty());
  EXPECT_EQ(r.metadata().value("format", ""), "pt");
}

// Writing a model reports progress to the hang watchdog (core/progress.h), so a long final save
// is not taken for a hang.
TEST(Safetensors, WriterReportsProgress) {
  TempDir tmp;
  const auto a = random_floats(64, 3);
  int ticks = 0;
  set_progress_hook([&ticks] { ++ticks; });
  write_safetensors(tmp / "p.safetensors", {{"a", {8, 8}, a.data()}}, "BF16");
  set_progress_hook({});
  EXPECT_GE(ticks, 1);
}

TEST(Safetensors, HeaderIsPaddedJsonWithMetadata) {
  TempDir tmp;
  auto a = random_floats(7, 2);
  const std::string path = tmp / "t.safetensors";
  write_safetensors(path, {{"model.norm.weight", {7}, a.data()}}, "BF16");
  std::ifstream in(path, std::ios::binary);
  unsigned char b[8];
  in.read(reinterpret_cast<char*>(b), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  EXPECT_EQ(n % 8, 0u);  // the data section starts 8-byte aligned
  std::string header(n, '\0');
  in.read(&header[0], n);
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j["model.norm.weight"]["dtype"], "BF16");
  EXPECT_EQ(j["model.norm.weight"]["data_offsets"], nlohmann::json::array({0, 14}));
  EXPECT_EQ(fs::file_size(path), 8 + n + 14);
}

TEST(Safetensors, RoundTripBF16MatchesHalf) {
  TempDir tmp;
  auto a = random_floats(1000, 3);
  a[0] = 1e-40f;  // subnormal
  a[1] = 3.0e38f;
  const std::string path = tmp / "t.safetensors";
  write_safetensors(path, {{"w", {10, 100}, a.data()}}, "BF16");
  SafetensorsReader r(path);
  EXPECT_EQ(r.find("w")->dtype, "BF16");
  auto got = r.read("w");
  std::vector<float> want(a.size());
  for (size_t i = 0; i < a.size(); ++i) want[i] = bf16_to_f32(f32_to_bf16(a[i]));
  EXPECT_TRUE(same_bits(got, want));
  // Values already representable in bf16 survive unchanged.
  write_safetensors(path, {{"w", {10, 100}, want.data()}}, "BF16");
  EXPECT_TRUE(same_bits(SafetensorsReader(path).read("w"), want));
}

TEST(Safetensors, RoundTripF16MatchesHalf) {
  TempDir tmp;
  auto a = random_floats(1000, 4);
  a[0] = 1e-6f;    // fp16 subnormal
  a[1] = 70000.f;  // overflows to inf
  const std::string path = tmp / "t.safetensors";
  write_safetensors(path, {{"w", {1000}, a.data()}}, "F16");
  auto got = SafetensorsReader(path).read("w");
  std::vector<float> want(a.size());
  for (size_t i = 0; i < a.size(); ++i) want[i] = f16_to_f32(f32_to_f16(a[i]));
  EXPECT_TRUE(same_bits(got, want));
  EXPECT_TRUE(std::isinf(got[1]));
}

TEST(Safetensors, ReadsF64) {
  TempDir tmp;
  const double d[3] = {1.5, -2.25, 1e-3};
  std::string data(reinterpret_cast<const char*>(d), sizeof d);
  const std::string path = tmp / "t.safetensors";
  write_raw(path, R"({"x":{"dtype":"F64","shape":[3],"data_offsets":[0,24]}})", data);
  auto got = SafetensorsReader(path).read("x");
  EXPECT_EQ(got, (std::vector<float>{1.5f, -2.25f, float(1e-3)}));
}

TEST(Safetensors, WriterRejectsBadDtypeAndLeavesNothing) {
  TempDir tmp;
  float x = 1;
  const std::string path = tmp / "t.safetensors";
  expect_error([&] { write_safetensors(path, {{"x", {1}, &x}}, "I64"); }, {path, "I64"});
  expect_error([&] { write_safetensors(path, {{"x", {1}, &x}, {"x", {1}, &x}}, "F32"); },
               {path, "x", "twice"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".partial"));
}

TEST(Safetensors, BadJsonHeader) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  write_raw(path, R"({"x":{"dtype":"F32",)", "");
  expect_error([&] { SafetensorsReader r(path); }, {path, "bad JSON header"});
}

TEST(Safetensors, HeaderLengthPastEnd) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  write_raw(path, "{}", "");
  fs::resize_file(path, 6);
  expect_error([&] { SafetensorsReader r(path); }, {path, "too short"});
  std::ofstream(path, std::ios::binary) << std::string("\xff\xff\x00\x00\x00\x00\x00\x00{}", 10);
  expect_error([&] { SafetensorsReader r(path); }, {path, "header length 65535", "size 10"});
}

TEST(Safetensors, TruncatedFileNamesTensor) {
  TempDir tmp;
  auto a = random_floats(64, 5);
  const std::string path = tmp / "t.safetensors";
  write_safetensors(path, {{"model.embed_tokens.weight", {8, 8}, a.data()},
                           {"model.norm.weight", {8}, a.data()}},
                    "F32");
  fs::resize_file(path, fs::file_size(path) - 4);
  expect_error([&] { SafetensorsReader r(path); },
               {path, "model.norm.weight", "run past the end of the file"});
}

TEST(Safetensors, OffsetsInconsistentWithShape) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  write_raw(path, R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {path, "tensor w", "hold 8 bytes", "needs 12"});
  write_raw(path, R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {path, "tensor w", "reversed"});
  write_raw(path, R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}})", std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {path, "tensor w", "unknown dtype Q4"});
  write_raw(path, R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {path, "tensor w", "bad dimension"});
  write_raw(path, R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {path, "tensor w", "overflows"});
}

TEST(Safetensors, OverlappingTensorsRejected) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  // b's bytes [4, 12) share [4, 8) with a's [0, 8): each alone is consistent with its shape.
  write_raw(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, '\0'));
  expect_error([&] { SafetensorsReader r(path); }, {path, "tensors a [0, 8) and b [4, 12) overlap"});
  // Adjacent ranges and an empty tensor inside another's range are fine.
  write_raw(path, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
            std::string(12, '\0'));
  SafetensorsReader r(path);
  EXPECT_EQ(r.tensors().size(), 3u);
}

TEST(Safetensors, UnsupportedDtypeOnRead) {
  TempDir tmp;
  const std::string path = tmp / "t.safetensors";
  write_raw(path, R"({"position_ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  SafetensorsReader r(path);  // the header is valid
  expect_error([&] { r.read("position_ids"); }, {path, "position_ids", "unsupported dtype I64"});
  expect_error([&] { r.read("nope"); }, {path, "no tensor nope"});
}

TEST(Safetensors, MissingFile) {
  TempDir tmp;
  expect_error([&] { SafetensorsReader r(tmp / "absent.safetensors"); },
               {"absent.safetensors", "no such file"});
}
