// The option table: every dtrain option declared once, as one row. A row
// names the option and the Config field it sets, says how its text is parsed
// and range-checked, gives its help line, its --help group, an example value
// and its effect class. Everything else is generated from the table: --help,
// command-line and INI parsing (Boost.Program_options), config.json, the
// resolved configuration, --dump-config, the launch and trajectory hashes and
// the options table of docs/configuration.md. A field's default is its
// initializer in cli/config.h. Rules that tie options together live in
// validate() (cli/options.cpp), after the table.
#pragma once
#include "cli/config.h"

#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <string>
#include <vector>

namespace dtrain {

// What changing an option does to a run's trajectory. A resume refuses
// Exact changes, allows Rounding changes within its tolerance and ignores
// None; the trajectory hash covers the Exact options.
enum class Effect {
  Exact,     // changes the training math (model, data, seed, optimizer, LR, global batch, ...)
  Rounding,  // changes only float rounding (the batch split, world size, buckets, threads, ...)
  None,      // does not touch the trajectory (logging, evaluation, output paths, when to stop)
};
const char* to_string(Effect effect);

struct OptionSpec {
  std::string name;     // without the leading --
  std::string group;    // its --help group
  std::string help;     // one line
  std::string kind;     // how the text reads: integer, number, true|false, a|b|c, ...
  std::string example;  // a valid value other than the default (for the tests)
  Effect effect = Effect::Exact;
  // Parses `text`, checks its range and stores it; throws UsageError naming
  // the option and what it accepts.
  std::function<void(Config&, const std::string& text)> set;
  // The value as text that `set` reads back to the same value; "" when unset
  // (a derived batch size, no --init-from path).
  std::function<std::string(const Config&)> text;
  // The value in config.json (null when unset).
  std::function<nlohmann::json(const Config&)> json;
};

// In --help order, grouped.
const std::vector<OptionSpec>& option_table();

// The --help groups in order, with their headings.
struct OptionGroup {
  std::string name;
  std::string heading;  // shown in --help and the docs
};
const std::vector<OptionGroup>& option_groups();

}  // namespace dtrain
