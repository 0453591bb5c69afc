// What follows from the option table: parsing the command line and INI files
// into a validated Config, --help, --dump-config, config.json, the hashes and
// the docs tables.
#include "cli/options.h"

#include "cli/option_table.h"
#include "common/error.h"

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace po = boost::program_options;

namespace dtrain {

double default_eps(OptimizerKind kind) { return kind == OptimizerKind::Lamb ? 1e-6 : 1e-8; }

std::string activation_checkpointing_needs_blocks(ModelKind kind) {
  return std::string("--activation-checkpointing blocks needs --model gpt (the ") + to_string(kind) +
         " has no transformer blocks to recompute); use none";
}

namespace {

void require(bool condition, const std::string& message) {
  if (!condition) throw UsageError(message);
}

// Rules that tie several options together. Each option's own range is
// checked by its row in the table; batch sizes against the world size by
// derive_batch_plan.
void validate(const Config& c) {
  require(c.lr.warmup_steps == 0 || c.lr.warmup_epochs == 0, "give --warmup-steps or --warmup-epochs, not both");
  require(c.lr.schedule != LrScheduleKind::Step || !c.lr.milestones_epochs.empty(),
          "--schedule step needs --lr-milestones (epochs, e.g. 30,60,80)");
  require(!c.optimizer.nesterov || c.optimizer.momentum > 0, "--nesterov true needs --momentum > 0");
  require(!c.optimizer.nesterov || c.optimizer.kind == OptimizerKind::Sgd,
          "--nesterov applies to --optimizer sgd only");
  require(!c.model.hidden.empty() || c.model.kind != ModelKind::Mlp,
          "--hidden needs at least one width for --model mlp (e.g. --hidden 512,256)");
  require(c.model.kind != ModelKind::Gpt || c.model.n_embd % c.model.n_head == 0,
          "--n-embd " + std::to_string(c.model.n_embd) + " must be a multiple of --n-head " +
              std::to_string(c.model.n_head) + " (each head gets n_embd / n_head dimensions)");
  require(c.model.activation_checkpointing != ActivationCheckpointing::Blocks || c.model.kind == ModelKind::Gpt,
          activation_checkpointing_needs_blocks(c.model.kind));
  require(!(c.distributed.backend == BackendKind::Nccl && c.distributed.device == DeviceKind::Cpu),
          "--backend nccl needs --device cuda (or auto)");
  if (c.batch.micro_batch_size == kAutoMicroBatch) {
    require(c.batch.global_batch_size > 0,
            "--micro-batch-size auto needs --global-batch-size (the micro-batch is chosen to divide it)");
    require(c.batch.grad_accum_steps == 0,
            "--micro-batch-size auto derives --grad-accum-steps: leave it out");
  }
  const std::string& metric = c.study.target.metric;
  require(metric.rfind("val_", 0) != 0 || c.data.validation_size > 0,
          "--target " + metric + " needs a validation split: add --validation-size N (e.g. 5000)");

}

const char* const kUsage = "Usage: dtrain [--config FILE] [options]\n\nOptions";

// Options that steer dtrain itself rather than set a Config field.
void add_general_options(po::options_description& all) {
  po::options_description general("General");
  general.add_options()
    ("help,h", "print this help and exit")
    ("config", po::value<std::string>()->value_name("FILE"),
     "read options from this INI file (`name = value` lines); the command line wins")
    ("dump-config", "print the resolved configuration as an INI file (a start for a new --config) and exit");
  all.add(general);
}

// The table as Boost descriptions, group by group. Every value is taken as
// text; the table's own parsers read it. `with_defaults` shows the defaults
// (for --help); parsing leaves them out, so that only given options appear.
po::options_description table_description(bool with_defaults) {
  const Config defaults;
  po::options_description all(kUsage);
  if (with_defaults) add_general_options(all);
  for (const auto& group : option_groups()) {
    po::options_description section(group.heading);
    for (const auto& spec : option_table()) {
      if (spec.group != group.name) continue;
      auto* value = po::value<std::string>()->value_name(spec.kind.find('|') != std::string::npos ? "WORD" : spec.kind);
      const std::string default_text = spec.text(defaults);
      if (with_defaults && !default_text.empty()) value->default_value(default_text);
      section.add_options()(spec.name.c_str(), value, spec.help.c_str());
    }
    all.add(section);
  }
  return all;
}

struct GivenValue {
  std::string text;
  std::string source;  // "the command line" or "FILE:LINE"
};

// A config file's text, at most 1 MiB.
std::string read_config_text(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  const std::string shown = printable_excerpt(path, 200);
  if (!file || !std::filesystem::is_regular_file(path)) {
    throw UsageError("cannot open config file " + shown + ": check the --config path");
  }
  constexpr std::streamsize kMaxBytes = 1 << 20;
  std::string content(static_cast<size_t>(kMaxBytes) + 1, '\0');
  file.read(content.data(), kMaxBytes + 1);
  content.resize(static_cast<size_t>(file.gcount()));
  if (static_cast<std::streamsize>(content.size()) > kMaxBytes) {
    throw UsageError("config file " + shown + " is larger than 1 MiB: --config takes a short INI file of `name = value` lines");
  }
  return content;
}

// The options of one config file's text, each with its line. Boost parses
// each line, so that an error can name the line (Boost's own errors do not).
std::map<std::string, GivenValue> parse_config_lines(const std::string& content, const std::string& path,
                                                     const po::options_description& options) {
  const std::string shown = printable_excerpt(path, 200);
  std::map<std::string, GivenValue> given;
  std::istringstream lines(content);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = shown + ":" + std::to_string(number);
    if (line.find('\0') != std::string::npos) {
      throw UsageError(where + ": binary data; --config takes a text file of `name = value` lines, not '" +
                       printable_excerpt(line, 20) + "'");
    }
    const size_t first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line[first] == '[') {
      throw UsageError(where + ": sections like '" + printable_excerpt(line.substr(first)) +
                       "' are not supported; write `name = value` lines only");
    }
    po::parsed_options parsed(&options);
    try {
      std::istringstream stream(line);
      parsed = po::parse_config_file(stream, options, /*allow_unregistered=*/false);
    } catch (const po::unknown_option& e) {
      throw UsageError(where + ": unknown option '" + printable_excerpt(e.get_option_name()) + "'; see dtrain --help");
    } catch (const po::invalid_config_file_syntax&) {
      throw UsageError(where + ": '" + printable_excerpt(line) + "' is not a `name = value` line");
    } catch (const po::error& e) {
      throw UsageError(where + ": " + printable_excerpt(e.what(), 200));
    }
    for (const auto& option : parsed.options) {
      const std::string text = option.value.empty() ? "" : option.value.front();
      const auto [previous, inserted] = given.emplace(option.string_key, GivenValue{text, where});
      if (!inserted) {
        throw UsageError(where + ": " + option.string_key + " is already set at " + previous->second.source +
                         "; give each option once");
      }
    }
  }
  return given;
}

uint64_t hash_options(const Config& config, bool exact_only) {
  uint64_t hash = 1469598103934665603ULL;
  for (const auto& spec : option_table()) {
    if (exact_only && spec.effect != Effect::Exact) continue;
    for (unsigned char byte : spec.name + "=" + spec.text(config) + "\n") {
      hash ^= byte;
      hash *= 1099511628211ULL;
    }
  }
  return hash;
}

// The batch options are one group: two of micro, accumulation and global
// determine the third. The command line's batch options take precedence over
// the file's as a group: the file keeps only as many as the command line left
// undetermined, preferring the global batch, then the micro-batch. So with
// micro 128 and accumulation 1 in the file, --global-batch-size 1024 keeps
// micro 128 and derives accumulation, and --micro-batch-size 64 with a file
// that gives micro and accumulation keeps the file's accumulation.
void keep_file_batch_options_that_fit(const std::map<std::string, GivenValue>& command_line,
                                      std::map<std::string, GivenValue>& from_file) {
  static const char* const kByPreference[] = {"global-batch-size", "micro-batch-size", "grad-accum-steps"};
  int on_command_line = 0;
  for (const char* name : kByPreference) on_command_line += command_line.count(name) ? 1 : 0;
  if (on_command_line == 0) return;
  int room = 2 - on_command_line;
  for (const char* name : kByPreference) {
    if (command_line.count(name) || !from_file.count(name)) continue;
    if (room > 0) --room;
    else from_file.erase(name);
  }
}

}  // namespace

namespace {

// parse_options, with the config file's text given (`config_text`) or read
// from the --config path (null).
ParsedOptions parse(const std::vector<std::string>& args, const std::string* config_text) {
  ParsedOptions parsed;
  const po::options_description help = table_description(/*with_defaults=*/true);
  const po::options_description options = table_description(/*with_defaults=*/false);

  std::map<std::string, GivenValue> command_line;
  std::string config_path;
  bool config_given = false;
  try {
    // Stray words are collected into a hidden option so the error can name them.
    po::options_description parseable;
    add_general_options(parseable);
    parseable.add(options).add_options()("stray-argument", po::value<std::vector<std::string>>());
    po::positional_options_description positionals;
    positionals.add("stray-argument", -1);
    const auto given = po::command_line_parser(args).options(parseable).positional(positionals).run();
    for (const auto& option : given.options) {
      const std::string text = option.value.empty() ? "" : option.value.front();
      if (option.string_key == "stray-argument") {
        throw UsageError("unexpected argument '" + printable_excerpt(text) + "'; options are --name value (see dtrain --help)");
      } else if (option.string_key == "help") {
        parsed.help_requested = true;
      } else if (option.string_key == "dump-config") {
        parsed.dump_requested = true;
      } else if (option.string_key == "config") {
        if (config_given) throw UsageError("--config is given twice; give one config file");
        config_given = true;
        config_path = text;
      } else if (!command_line.emplace(option.string_key, GivenValue{text, "the command line"}).second) {
        throw UsageError("--" + option.string_key + " is given twice on the command line; give it once");
      }
    }
  } catch (const po::error& e) {
    throw UsageError(printable_excerpt(e.what(), 200) + "; see dtrain --help");
  }
  if (parsed.help_requested) {
    std::ostringstream text;
    text << help;
    parsed.help_text = text.str();
    return parsed;
  }
  parsed.config.config_file = config_path;
  std::map<std::string, GivenValue> from_file;
  if (config_given) {
    from_file = parse_config_lines(config_text ? *config_text : read_config_text(config_path), config_path, options);
  }

  keep_file_batch_options_that_fit(command_line, from_file);
  for (const auto& spec : option_table()) {
    const GivenValue* given = nullptr;
    if (auto found = command_line.find(spec.name); found != command_line.end()) given = &found->second;
    else if (auto in_file = from_file.find(spec.name); in_file != from_file.end()) given = &in_file->second;
    if (!given) continue;
    try {
      spec.set(parsed.config, given->text);
    } catch (const UsageError& e) {
      if (given->source == "the command line") throw;
      throw UsageError(given->source + ": " + e.what());
    }
    parsed.sources[spec.name] = given->source;
  }
  validate(parsed.config);
  return parsed;
}

}  // namespace

ParsedOptions parse_options(const std::vector<std::string>& args) { return parse(args, nullptr); }

ParsedOptions parse_config_text(const std::string& text, const std::string& name) {
  return parse({"--config", name}, &text);
}

nlohmann::json config_to_json(const Config& config) {
  // Keys are the option names, so the printed config can be fed back.
  nlohmann::json json = nlohmann::json::object();
  for (const auto& spec : option_table()) json[spec.name] = spec.json(config);
  return json;
}

namespace {
// An empty value is written only where it differs from the default (an
// empty --hidden for the CNN): elsewhere empty means unset, the default.
bool written_empty(const OptionSpec& spec, const std::string& text) {
  static const Config defaults;
  return text.empty() && !spec.text(defaults).empty();
}
}  // namespace

std::string hash_text(uint64_t hash) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

std::string config_to_ini(const Config& config) {
  std::ostringstream out;
  for (const auto& spec : option_table()) {
    const std::string text = spec.text(config);
    if (!text.empty() || written_empty(spec, text)) out << spec.name << " = " << text << "\n";
  }
  return out.str();
}

std::string dump_config(const ParsedOptions& parsed) {
  std::ostringstream out;
  out << "# dtrain configuration (dtrain --dump-config). Every option, with where its value\n"
         "# came from. Run with: dtrain --config FILE (the command line wins over the file).\n";
  for (const auto& group : option_groups()) {
    out << "\n## " << group.heading << "\n";
    for (const auto& spec : option_table()) {
      if (spec.group != group.name) continue;
      const std::string text = spec.text(parsed.config);
      const auto source = parsed.sources.find(spec.name);
      out << "\n# " << spec.help << " [" << to_string(spec.effect) << "]\n";
      if (text.empty() && !written_empty(spec, text)) {
        out << "# unset" << (spec.group == "batch" ? " (derived from the other batch sizes)" : "")
            << (source != parsed.sources.end() ? "; given empty in " + source->second : "") << "\n"
            << "# " << spec.name << " =\n";
      } else {
        out << "# " << (source == parsed.sources.end() ? "default" : "from " + source->second) << "\n"
            << spec.name << " = " << text << "\n";
      }
    }
  }
  return out.str();
}

uint64_t launch_hash(const Config& config) { return hash_options(config, /*exact_only=*/false); }

uint64_t trajectory_hash(const Config& config) { return hash_options(config, /*exact_only=*/true); }

std::string options_markdown() {
  const Config defaults;
  std::ostringstream out;
  for (const auto& group : option_groups()) {
    out << "### " << group.heading << "\n\n| option | default | effect | meaning |\n|---|---|---|---|\n";
    for (const auto& spec : option_table()) {
      if (spec.group != group.name) continue;
      const std::string default_text = spec.text(defaults);
      out << "| `--" << spec.name << "` | " << (default_text.empty() ? "—" : default_text) << " | "
          << to_string(spec.effect) << " | " << spec.help << " |\n";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace dtrain
