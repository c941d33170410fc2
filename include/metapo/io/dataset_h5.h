// Dataset .h5 files (docs/formats.md, "Dataset files", format version 1): read with every check the
// format promises, written atomically. Serial HDF5 (one process opens the file); every rank of a job
// may read the same file at once.
//
// Every read validates what it returns (root attributes, each field's presence, type and shape,
// offsets, token ids against vocab_size, unique sample ids) and throws metapo::Error with one line
// naming the file, split and field: "data.h5: /train/chosen_offsets: last offset 120 != chosen_tokens
// length 118". Any root group other than /sft is a pair split (/train, /val, /test by convention).
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "metapo/data/dataset.h"

namespace metapo {

// Whether path is an HDF5 file whose root attribute `format` says metapo-dataset (of any version):
// a file that synth and tools/prepare_data.py may replace. Never throws.
bool is_dataset_file(const std::string& path);

// The root attributes only (cheap: no token arrays are read).
DatasetInfo read_dataset_info(const std::string& path);

// Every split present; sample ids are checked for uniqueness across all of them.
Dataset read_dataset(const std::string& path);

// One pair split; an absent split is an error that lists the splits the file has. Sample ids are
// checked within this split (read_dataset checks across splits).
PairSplit read_pair_split(const std::string& path, const std::string& split);

// The /sft split; an error when the file has none.
SftSplit read_sft_split(const std::string& path);

// Writes the whole dataset (after check_dataset) to path + ".partial", then renames it to path, so a
// crash or an error never leaves a half-written file under the final name and an earlier file
// survives intact. Creates missing parent directories.
void write_dataset(const std::string& path, const Dataset& d);

// Adds or replaces ref_logp_chosen / ref_logp_rejected (float64 [N]) in the named pair splits and
// sets their group attributes ref_model, ref_max_length and ref_model_fingerprint (model_fingerprint;
// not written when empty); other splits and fields are untouched.
// Atomic like write_dataset: copies the file to path + ".partial", modifies the copy, renames it.
// ref: split name -> (chosen, rejected) log-probs, one per pair in file order.
void write_ref_logps(const std::string& path,
                     const std::map<std::string, std::pair<std::vector<double>, std::vector<double>>>& ref,
                     const std::string& ref_model, int64_t ref_max_length,
                     const std::string& ref_model_fingerprint = "");

}  // namespace metapo
