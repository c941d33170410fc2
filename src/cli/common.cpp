#include "metapo/ops/ops.h"
#include "metapo/model/config_json.h"
#include "metapo/cli/common.h"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <typeinfo>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/core/threads.h"

namespace fs = std::filesystem;

namespace metapo::cli {

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
}

// The [cmd] section of an INI file as --key=value arguments (keys may use '-' or '_').
std::vector<std::string> ini_section_args(const std::string& path, const std::string& cmd) {
  // The sections are commands (main.cpp's table): a misspelt one would silently set nothing.
  static const char* const kCommands[] = {"init",  "score", "export",   "bench", "synth", "sft",
                                          "precompute-ref", "train", "eval", "generate", "plan", "analyze"};
  std::error_code ec;
  MP_CHECK(!fs::is_directory(path, ec), "--config ", path, ": is a directory, not an INI file");
  std::ifstream in(path);
  MP_CHECK(in, "--config ", path, ": cannot open file");
  std::vector<std::string> args;
  std::map<std::string, int> seen;  // key -> its line in the command's section
  std::string line, section;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (lineno == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // a UTF-8 byte-order mark
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line[0] == '[') {
      MP_CHECK(line.back() == ']', "--config ", path, ":", lineno, ": malformed section header");
      section = trim(line.substr(1, line.size() - 2));
      bool known = false;
      for (const char* c : kCommands) known = known || section == c;
      MP_CHECK(known, "--config ", path, ":", lineno, ": [", section,
               "] is not a metapo command (sections are named after commands: [train], [sft], [eval], ...)");
      continue;
    }
    const size_t eq = line.find('=');
    MP_CHECK(eq != std::string::npos, "--config ", path, ":", lineno, ": expected key = value");
    MP_CHECK(!section.empty(), "--config ", path, ":", lineno, ": a key before any [command] section");
    if (section != cmd) continue;
    std::string key = trim(line.substr(0, eq)), val = trim(line.substr(eq + 1));
    for (char& ch : key)
      if (ch == '_') ch = '-';
    // Said here, with both lines: Boost notices a key given twice only when the command line does
    // not also set it.
    const auto [at, first] = seen.emplace(key, lineno);
    MP_CHECK(first, "--config ", path, ":", lineno, ": ", key, " is set twice in [", cmd, "] (also on line ", at->second,
             ")");
    // Values are taken as written: quotes and a comment after the value would become part of it (a
    // run directory named "run" with its quotes), so they are refused rather than guessed at.
    MP_CHECK(val.size() < 2 || !((val.front() == '"' && val.back() == '"') || (val.front() == '\'' && val.back() == '\'')),
             "--config ", path, ":", lineno, ": ", key, " = ", val, ": values are taken as written; remove the quotes");
    for (const char* mark : {" #", " ;", "\t#", "\t;"})
      MP_CHECK(val.find(mark) == std::string::npos, "--config ", path, ":", lineno, ": ", key, " = ", val,
               ": a value may not hold '", std::string(mark).replace(0, 1, " "),
               "' (it reads as a comment after the value, which would become part of it); put comments on lines "
               "of their own");
    args.push_back("--" + key + "=" + val);
  }
  return args;
}

}  // namespace

// Boost reads "-1" into an unsigned option as 2^64 - 1: a negative value given to one (a --seed) is
// refused instead of silently wrapped. `where` prefixes the line ("--config F [cmd]: ").
static void refuse_negative_unsigned(const po::parsed_options& parsed, const po::variables_map& vm,
                                     const std::string& where, const std::string& cmd) {
  for (const po::option& o : parsed.options) {
    if (o.value.empty() || !vm.count(o.string_key)) continue;
    const std::type_info& t = vm[o.string_key].value().type();
    if (t != typeid(uint64_t) && t != typeid(uint32_t) && t != typeid(unsigned long long)) continue;
    const std::string& v = o.value[0];
    const size_t first = v.find_first_not_of(" \t");
    if (first != std::string::npos && v[first] == '-')
      fail(where, "--", o.string_key, " ", v, ": must be a whole number >= 0 (see metapo ", cmd, " --help)");
  }
}

// A file or directory option given as "" names nothing: said as such, not as a file "" not found.
static void refuse_empty_paths(const po::variables_map& vm, const std::string& where) {
  for (const char* name : {"model", "data", "out", "input", "output", "prompts", "run", "ref-model", "preset", "resume"}) {
    if (!vm.count(name) || vm[name].defaulted() || vm[name].value().type() != typeid(std::string)) continue;
    MP_CHECK(!vm[name].as<std::string>().empty(), where, "--", name, " must not be empty");
  }
}

bool parse_args(const std::string& cmd, const std::string& usage, po::options_description& desc,
                int argc, char** argv, po::variables_map& vm, const Context& ctx) {
  desc.add_options()("help,h", "show this help")(
      "config", po::value<std::string>(), ("INI file; its [" + cmd + "] section sets options").c_str());
  // --no-KEY turns a switch (--greedy, --profile, ...) off: on the command line it wins over the
  // file's "KEY = true", as every other option does.
  std::vector<std::string> words;  // argv without argv[0] (here the subcommand name)
  std::set<std::string> negated;
  for (int i = 1; i < argc; ++i) {
    const std::string w = argv[i];
    const po::option_description* od = w.rfind("--no-", 0) == 0 ? desc.find_nothrow(w.substr(5), false) : nullptr;
    if (od && od->semantic()->max_tokens() == 0 && od->long_name() == w.substr(5))
      negated.insert(w.substr(5));
    else
      words.push_back(w);
  }
  try {
    // No positional arguments: a stray word (a forgotten option name) is an error, not ignored.
    po::options_description with_stray;
    with_stray.add(desc).add_options()("metapo-stray-arguments", po::value<std::vector<std::string>>());
    po::positional_options_description stray;
    stray.add("metapo-stray-arguments", -1);
    const po::parsed_options parsed = po::command_line_parser(words).options(with_stray).positional(stray).run();
    po::store(parsed, vm);
    refuse_negative_unsigned(parsed, vm, "", cmd);
    refuse_empty_paths(vm, "");
  } catch (const po::error& e) {
    fail(e.what(), " (see metapo ", cmd, " --help)");
  }
  for (const std::string& key : negated)
    MP_CHECK(!vm.count(key) || vm[key].defaulted(), "--", key, " and --no-", key, " contradict each other");
  if (vm.count("metapo-stray-arguments"))
    fail("unexpected argument '", vm["metapo-stray-arguments"].as<std::vector<std::string>>().front(),
         "': options are written --name value (see metapo ", cmd, " --help)");
  if (vm.count("help")) {
    if (ctx.topo.is_root()) std::cout << "usage: " << usage << "\n\n" << desc << "\n";
    return false;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    std::vector<std::string> args;
    for (const std::string& a : ini_section_args(path, cmd)) {
      // Switches (--greedy, --profile) take no value on the command line; in the file they are
      // written "key = true" or "key = false" (and --no-KEY on the command line turns them off).
      const size_t eq = a.find('=');
      const std::string key = a.substr(2, eq - 2), val = a.substr(eq + 1);
      MP_CHECK(key != "config", "--config ", path, " [", cmd, "]: config: a config file cannot include another");
      const po::option_description* od = desc.find_nothrow(key, false);
      if (od && od->semantic()->max_tokens() == 0) {
        MP_CHECK(val == "true" || val == "false", "--config ", path, " [", cmd, "]: ", key,
                 " is a switch: write true or false");
        if (val == "true" && !negated.count(od->long_name())) args.push_back("--" + key);
      } else {
        args.push_back(a);
      }
    }
    try {
      // Stored after the command line: Boost keeps the first value, so the command line wins.
      const po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
      po::store(parsed, vm);
      refuse_negative_unsigned(parsed, vm, "--config " + path + " [" + cmd + "]: ", cmd);
      refuse_empty_paths(vm, "--config " + path + " [" + cmd + "]: ");
    } catch (const po::error& e) {
      fail("--config ", path, " [", cmd, "]: ", e.what());
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    fail(e.what(), " (see metapo ", cmd, " --help)");
  }
  return true;
}

void add_parallel_options(po::options_description& desc, ParallelOptions& p) {
  desc.add_options()
    ("tp", po::value(&p.tp)->default_value(1), "tensor-parallel ranks per model replica (Megatron style; heads, KV heads and intermediate size must divide)")
    ("pp", po::value(&p.pp)->default_value(1), "pipeline-parallel stages (1F1B schedule); data parallelism takes the rest: DP = world / (TP x PP)")
    ("pp-layers", po::value(&p.pp_layers_text)->default_value(""), "decoder layers per pipeline stage, comma-separated, e.g. 3,2,2,1 (default: an even split, the remainder on the first stages)");
}

void add_device_option(po::options_description& desc, std::string& device) {
  desc.add_options()("device", po::value(&device)->default_value("cpu"),
                     "where the model runs: cpu, cuda (one GPU per rank, --tp 1 --pp 1)");
}

Device check_device_option(const std::string& device, const ParallelOptions& par, int local_rank) {
  const Device d = parse_device(device);
  ops::require_device(d);
  MP_CHECK(d == Device::CPU || (par.tp == 1 && par.pp == 1), "--device ", device,
           ": one device per model replica for now (--tp 1 --pp 1)");
  ops::select_device(d, local_rank);
  return d;
}

std::vector<int64_t> parse_pp_layers(const std::string& text, int pp) {
  std::vector<int64_t> out;
  if (text.empty()) return out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MP_CHECK(used == item.size() && !item.empty() && v >= 1, "--pp-layers ", text,
             ": expected comma-separated positive layer counts, one per pipeline stage");
    out.push_back(v);
  }
  MP_CHECK(int64_t(out.size()) == pp, "--pp-layers ", text, ": ", out.size(), " layer counts for --pp ", pp, " stages");
  return out;
}

void apply_parallel_options(Context& ctx, ParallelOptions& p) {
  p.pp_layers = parse_pp_layers(p.pp_layers_text, p.pp);
  MP_CHECK(p.tp >= 1, "--tp ", p.tp, ": must be at least 1");
  MP_CHECK(p.pp >= 1, "--pp ", p.pp, ": must be at least 1");
  MP_CHECK(ctx.topo.world_size % (p.tp * p.pp) == 0, "--tp ", p.tp, " x --pp ", p.pp, " = ", p.tp * p.pp,
           " does not divide the world size ", ctx.topo.world_size, " (mpirun -np)");
  if (p.tp == ctx.topo.tp && p.pp == ctx.topo.pp) return;
  ctx.topo = Topology::create(p.tp, p.pp);
  ctx.threads = configure_threads(ctx.topo.local_size);
}

uint64_t parse_bytes(const std::string& text, const std::string& option) {
  size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) ++digits;
  const std::string num = text.substr(0, digits), unit = text.substr(digits);
  static const std::map<std::string, double> units = {
      {"", 1.0},         {"B", 1.0},           {"KB", 1e3},          {"MB", 1e6},          {"GB", 1e9},
      {"TB", 1e12},      {"KiB", 1024.0},      {"MiB", 1048576.0},   {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
  const auto u = units.find(unit);
  char* end = nullptr;
  const double v = num.empty() ? -1.0 : std::strtod(num.c_str(), &end);
  MP_CHECK(u != units.end() && end && *end == '\0' && v > 0, option, " ", text,
           ": not a size (a positive number of bytes, or with KB, MB, GB, TB, KiB, MiB, GiB, TiB)");
  return uint64_t(v * u->second);
}

std::string resolve_preset(const std::string& name) {
  if (fs::is_regular_file(name)) return name;
  // The configs/ of the checkout the binary is in (build/metapo -> configs/), then those of the tree
  // it was built from: a moved or second checkout uses its own presets.
  std::vector<fs::path> dirs;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path() / "configs");
  const fs::path built = fs::path(METAPO_SOURCE_DIR) / "configs";
  if (dirs.empty() || !fs::equivalent(dirs[0], built, ec)) dirs.push_back(built);
  std::string looked;
  for (const fs::path& configs : dirs) {
    const fs::path ini = configs / "presets" / (name + ".ini"), json = configs / "models" / (name + ".json");
    if (fs::is_regular_file(ini, ec)) return ini.string();
    if (fs::is_regular_file(json, ec)) return json.string();
    looked += (looked.empty() ? "" : ", ") + ini.string() + ", " + json.string();
  }
  fail("--preset ", name, ": no such preset (looked for ", looked, ")");
}

LlamaConfig preset_config(const std::string& name) {
  const std::string path = resolve_preset(name);
  if (path.size() < 5 || path.compare(path.size() - 5, 5, ".json") != 0) return config_from_ini(path);
  std::ifstream in(path);
  MP_CHECK(in, path, ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": bad JSON: ", e.what());
  }
  return config_from_json(j, path);
}

std::vector<std::string> gather_to_root(const std::string& mine, const Topology& topo) {
  std::vector<uint8_t> all;
  std::vector<size_t> lens;  // empty except on the root
  topo.world_comm().gather(mine.data(), mine.size(), all, lens, 0);
  std::vector<std::string> per_rank;
  size_t at = 0;
  for (size_t n : lens) per_rank.emplace_back(all.begin() + long(at), all.begin() + long(at + n)), at += n;
  return per_rank;
}

void for_each_token_line(
    const std::string& path, const std::string& option, int64_t vocab,
    const std::function<void(const nlohmann::json&, std::vector<int32_t>&&, const std::string&)>& fn) {
  std::ifstream in(path);
  MP_CHECK(in, option, " ", path, ": cannot open file");
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str_cat(path, ":", lineno, ": ");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(where, "invalid JSON (", e.what(), ")");
    }
    MP_CHECK(j.is_object() && j.contains("tokens") && j["tokens"].is_array(), where,
             "expected an object with a \"tokens\" array");
    std::vector<int32_t> tokens;
    for (const auto& t : j["tokens"]) {
      MP_CHECK(t.is_number_integer(), where, "\"tokens\" must hold integers");
      const int64_t id = t.get<int64_t>();
      MP_CHECK(id >= 0 && id < vocab, where, "token id ", id, " is outside the model's vocabulary [0, ",
               vocab, ")");
      tokens.push_back(int32_t(id));
    }
    fn(j, std::move(tokens), where);
  }
}

void check_input_file(const std::string& path, const std::string& option) {
  std::error_code ec;
  MP_CHECK(!path.empty(), option, " must not be empty");
  MP_CHECK(fs::exists(path, ec), option, " ", path, ": no such file");
  MP_CHECK(!fs::is_directory(path, ec), option, " ", path, ": is a directory, not a file");
}

namespace {

// Whether a file is what the command writes: JSON (analysis.json) that `own.is_own` accepts, or JSONL
// each of whose lines it accepts (of a file over 64 MiB, the first line only). torn_tail: a last
// line without its newline is not looked at (a .partial file of a killed writer).
bool looks_own(const std::string& path, const OwnOutput& own, bool torn_tail = false) {
  std::error_code ec;
  const bool big = fs::file_size(path, ec) > (uint64_t(64) << 20);
  std::ifstream f(path, std::ios::binary);
  if (own.whole_json) {
    if (big) return false;
    try {
      return own.is_own(nlohmann::json::parse(f));
    } catch (const nlohmann::json::exception&) {
      return false;
    }
  }
  size_t lines = 0;
  while (f) {
    std::string line;  // at most 1 MiB of it: a user's file may have no newline at all
    bool ended = false;
    for (char c; line.size() < (size_t(1) << 20) && f.get(c);) {
      if (c == '\n') {
        ended = true;
        break;
      }
      line.push_back(c);
    }
    if (line.empty()) continue;
    if (torn_tail && !ended && f.peek() == std::ifstream::traits_type::eof()) break;
    try {
      if (!own.is_own(nlohmann::json::parse(line))) return false;
    } catch (const nlohmann::json::exception&) {
      return false;
    }
    if (++lines == 1 && big) break;
  }
  return lines > 0;
}

bool int_array(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_array()) return false;
  for (const auto& x : j[key])
    if (!x.is_number_integer()) return false;
  return true;
}
}  // namespace

OwnOutput generate_output() {
  return {[](const nlohmann::json& j) {
            return j.is_object() && j.contains("id") && int_array(j, "prompt") && int_array(j, "completion");
          },
          "a generate output (JSONL of {\"id\", \"prompt\", \"completion\", ...} token lists)", false};
}
OwnOutput score_output() {
  return {[](const nlohmann::json& j) {
            return j.is_object() && j.contains("logp") && (j["logp"].is_number() || j["logp"].is_null()) &&
                   j.contains("n_tokens") && j["n_tokens"].is_number_integer();
          },
          "a score output (JSONL of {\"logp\", \"n_tokens\", ...})", false};
}

void check_dir_writable(const std::string& path, const std::string& what) {
  std::error_code ec;
  // The nearest directory that exists: the file's, or the one its missing parents will be made in.
  fs::path dir = fs::absolute(path, ec).lexically_normal().parent_path();
  while (!fs::exists(dir, ec) && dir.has_parent_path() && dir.parent_path() != dir) dir = dir.parent_path();
  MP_CHECK(fs::is_directory(dir, ec), what, " ", path, ": ", dir.string(), " is not a directory");
  MP_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, what, " ", path, ": cannot write into ", dir.string(), " (",
           std::strerror(errno), ")");
}

void check_output_file(const std::string& path, const std::string& option, const std::vector<std::string>& inputs,
                       const OwnOutput& own) {
  std::error_code ec;
  MP_CHECK(!path.empty(), option, " must not be empty");
  MP_CHECK(!fs::is_directory(path, ec), option, " ", path, ": is a directory (give a file name)");
  const fs::path dir = fs::absolute(path, ec).lexically_normal().parent_path();
  for (const std::string& in : inputs) {
    if (in.empty() || !fs::exists(in, ec)) continue;
    const bool same = fs::exists(path, ec) && fs::equivalent(path, in, ec);
    MP_CHECK(!same, option, " ", path, ": is an input of this command (", in, "); choose another file");
    MP_CHECK(!fs::is_directory(in, ec) || !fs::exists(path, ec) || !fs::equivalent(dir, in, ec), option, " ", path,
             ": would replace a file of ", in, "; choose another file");
  }
  // The output is written to path.partial first: one a killed run left (empty, or of the output's
  // kind up to a torn last line) is replaced; anything else there is not metapo's. (Without a kind,
  // the writer checks it: dataset files, build_then_rename.)
  const std::string side = path + ".partial";
  const fs::file_status side_st = fs::symlink_status(side, ec);
  if (own.is_own && fs::exists(side_st))
    MP_CHECK(fs::is_regular_file(side_st) && (fs::file_size(side, ec) == 0 || looks_own(side, own, true)), option, " ",
             path, ": ", side, " exists and was not left by metapo (it writes ", path, " there first); move it away");
  if (fs::exists(path, ec))
    MP_CHECK(::access(path.c_str(), W_OK) == 0, option, " ", path, ": is read-only; metapo does not replace it");
  if (!own.is_own || !fs::exists(path, ec) || (fs::is_regular_file(path, ec) && fs::file_size(path, ec) == 0)) return;
  MP_CHECK(fs::is_regular_file(path, ec) && looks_own(path, own), option, " ", path, ": exists and is not ",
           own.what, "; metapo replaces only a file it wrote (remove it or choose another path)");
}

void write_files_atomic(const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<std::string> staged;  // the .partial files written so far
  std::error_code ec;
  auto drop_staged = [&] {
    for (const std::string& t : staged) fs::remove(t, ec);  // nothing half-written is left, under any name
  };
  for (const auto& [path, content] : files) {
    const std::string tmp = path + ".partial";
    if (fs::path(path).has_parent_path()) {
      fs::create_directories(fs::path(path).parent_path(), ec);
      if (ec) {
        const std::string why = ec.message();
        drop_staged();
        fail(path, ": cannot create the directory ", fs::path(path).parent_path().string(), " (", why, ")");
      }
    }
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      const int err = errno;
      drop_staged();
      fail(path, ": cannot open ", tmp, " for writing (", std::strerror(err), ")");
    }
    staged.push_back(tmp);
    out.write(content.data(), std::streamsize(content.size()));
    out.flush();
    if (!out) {
      const int err = errno;
      out.close();
      drop_staged();
      fail(path, ": write failed (", std::strerror(err), ")");
    }
  }
  // Every file is whole before any replaces what was there: all of them are new, or (a failure
  // above) none is.
  for (size_t k = 0; k < files.size(); ++k) {
    fs::rename(staged[k], files[k].first, ec);
    if (ec) {
      const std::string why = ec.message();
      for (size_t j = k; j < staged.size(); ++j) fs::remove(staged[j], ec);
      fail(files[k].first, ": cannot rename ", staged[k], " to it: ", why);
    }
  }
}

void write_file_atomic(const std::string& path, const std::string& content) { write_files_atomic({{path, content}}); }

}  // namespace metapo::cli
