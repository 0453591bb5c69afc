// Command-line and INI-file options, parsed into a validated Config. Each
// option is one row of the option table (cli/option_table.h); this file turns
// the table into Boost.Program_options descriptions, --help, config.json, the
// resolved INI, --dump-config and the two hashes. The command line wins over
// the config file; unknown options are errors.
#pragma once
#include "cli/config.h"

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dtrain {

struct ParsedOptions {
  Config config;
  bool help_requested = false;
  bool dump_requested = false;   // --dump-config: print dump_config(*this) and exit
  std::string help_text;         // filled when help_requested
  // Where each option that was given came from: "the command line" or
  // "FILE:LINE". Options absent here have their defaults.
  std::map<std::string, std::string> sources;
};

// `args` excludes argv[0]. Throws UsageError with a one-line message naming
// the bad option (and the file and line, for a config file) and the fix.
// Batch sizes are checked against the world size later, by derive_batch_plan
// (data/batch_plan.h).
ParsedOptions parse_options(const std::vector<std::string>& args);

// As `--config NAME` whose file holds `text`: the in-memory entry point of
// the config fuzz harness, through the same code as --config.
ParsedOptions parse_config_text(const std::string& text, const std::string& name);

// The configuration as a flat JSON object keyed by option name; values left
// unset (a derived batch size, no --init-from) are null.
nlohmann::json config_to_json(const Config& config);

// The configuration as INI lines (`name = value`), unset values left out,
// loadable again with --config.
std::string config_to_ini(const Config& config);

// --dump-config: every option, grouped as in --help, under its help line and
// a comment saying where its value came from; unset values commented out.
// Fed back through --config it gives the same configuration.
std::string dump_config(const ParsedOptions& parsed);

// 64-bit FNV-1a hashes of option texts, in table order.
// Launch hash: every option. Ranks compare it at start, so a rank launched
// with other flags is caught at once.
uint64_t launch_hash(const Config& config);
// Trajectory hash: the options of effect class Exact, which change the
// training math. Take it of the resolved configuration (the global batch
// filled in), so that a global batch given directly or derived hashes alike.
uint64_t trajectory_hash(const Config& config);
// A hash as 16 hex digits, as printed and recorded.
std::string hash_text(uint64_t hash);

// The options as markdown tables, one per --help group (docs/configuration.md
// embeds this; a unit test keeps the two equal).
std::string options_markdown();

}  // namespace dtrain
