// Command-line and INI-file options: declared once each (name, default, help)
// with Boost.Program_options, parsed into a validated Config. The command line
// wins over the config file; unknown options are errors.
#pragma once
#include "cli/config.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dtrain {

struct ParsedOptions {
  Config config;
  bool help_requested = false;
  std::string help_text;  // filled when help_requested
};

// `args` excludes argv[0]. Throws UsageError with a one-line message naming
// the bad option and the fix. Batch sizes are checked against the world size
// later, by derive_batch_plan (train/batch_plan.h).
ParsedOptions parse_options(const std::vector<std::string>& args);

// The resolved configuration as a flat JSON object keyed by option name.
nlohmann::json config_to_json(const Config& config);

// The resolved configuration as INI lines (`name = value`), loadable again
// with --config.
std::string config_to_ini(const Config& config);

// A stable 64-bit hash (FNV-1a) of the resolved configuration, compared across
// ranks at start so that a rank launched with other flags is caught at once.
uint64_t config_hash(const Config& config);

}  // namespace dtrain
