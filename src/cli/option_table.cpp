// Every option as one row of the table, and the factories that turn a row's
// kind (integer, number, choice, ...) into its parser, printer and range check.
#include "cli/option_table.h"

#include "common/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>

namespace dtrain {

const char* to_string(Effect effect) {
  switch (effect) {
    case Effect::Exact: return "exact";
    case Effect::Rounding: return "rounding";
    case Effect::None: return "none";
  }
  return "?";
}

namespace {

// The first five columns of a row: name, group, effect class, example value, help.
struct Row {
  const char* name;
  const char* group;
  Effect effect;
  const char* example;
  const char* help;
};

[[noreturn]] void bad_value(const std::string& name, const std::string& text, const std::string& what) {
  throw UsageError("--" + name + " '" + printable_excerpt(text) + "' is not " + what);
}

// Integers as written, the whole text, nothing else ("12abc", "1.5", " " fail).
template <typename Int>
Int parse_integer(const std::string& name, const std::string& text, const char* example) {
  if (std::is_unsigned_v<Int> && !text.empty() && text[0] == '-') {
    throw UsageError("--" + name + " must be a non-negative integer (got " + printable_excerpt(text) + ")");
  }
  const char* begin = text.data() + (text.size() > 1 && text[0] == '+' && std::isdigit(static_cast<unsigned char>(text[1])) ? 1 : 0);
  const char* end = text.data() + text.size();
  Int value{};
  const auto [stop, error] = std::from_chars(begin, end, value);
  if (error == std::errc::result_out_of_range) {
    throw UsageError("--" + name + " " + printable_excerpt(text) + " is out of range");
  }
  if (error != std::errc() || stop != end || begin == end) {
    bad_value(name, text, std::string("an integer (example: --") + name + " " + example + ")");
  }
  return value;
}

double parse_number(const std::string& name, const std::string& text, const char* example) {
  const char* begin = text.data() + (text.size() > 1 && text[0] == '+' && text[1] != '-' && text[1] != '+' ? 1 : 0);
  const char* end = text.data() + text.size();
  double value = 0;
  const auto [stop, error] = std::from_chars(begin, end, value);
  if (error != std::errc() || stop != end || begin == end) {
    bad_value(name, text, std::string("a number (example: --") + name + " " + example + ")");
  }
  if (!std::isfinite(value)) throw UsageError("--" + name + " must be a finite number");
  return value;
}

// The shortest %g text that reads back as the same double: 0.1, not
// 0.10000000000000001, and 0.0005, not 5e-04.
std::string format_number(double value) {
  char buffer[64];
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(buffer, sizeof buffer, "%.0f", value);  // 30, not 3e+01
    return buffer;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

std::string format_limit(double value) {
  return std::isinf(value) ? (value > 0 ? "inf" : "-inf") : format_number(value);
}

// An interval of accepted numbers and the words that say it.
struct Range {
  double low = -std::numeric_limits<double>::infinity();
  double high = std::numeric_limits<double>::infinity();
  bool low_open = false;
  bool high_open = false;

  bool contains(double value) const {
    return (low_open ? value > low : value >= low) && (high_open ? value < high : value <= high);
  }
  std::string describe() const {
    const bool unbounded_above = std::isinf(high);
    if (unbounded_above && low == 0 && low_open) return "must be positive";
    if (unbounded_above) return std::string("must be >") + (low_open ? " " : "= ") + format_limit(low);
    return "must be in " + std::string(low_open ? "(" : "[") + format_limit(low) + ", " + format_limit(high) +
           (high_open ? ")" : "]");
  }
};

constexpr double kInf = std::numeric_limits<double>::infinity();
const Range kPositive{0, kInf, true, false};
const Range kNonNegative{0, kInf, false, false};

// Binds a row to a field through `access` (Config& -> field&) with a parser
// (name, text -> value, range-checked) and a formatter (value -> text).
template <typename Access, typename Parse, typename Format, typename ToJson>
OptionSpec make_spec(const Row& row, std::string kind, Access access, Parse parse, Format format, ToJson to_json) {
  OptionSpec spec;
  spec.name = row.name;
  spec.group = row.group;
  spec.help = row.help;
  spec.kind = std::move(kind);
  spec.example = row.example;
  spec.effect = row.effect;
  const std::string name = row.name;
  spec.set = [access, parse, name](Config& config, const std::string& text) { access(config) = parse(name, text); };
  spec.text = [access, format](const Config& config) { return format(access(const_cast<Config&>(config))); };
  spec.json = [access, to_json](const Config& config) -> nlohmann::json {
    return to_json(access(const_cast<Config&>(config)));
  };
  return spec;
}

template <typename Access>
OptionSpec integer(const Row& row, Access access, int64_t low, int64_t high = std::numeric_limits<int64_t>::max()) {
  const char* example = row.example;
  auto parse = [low, high, example](const std::string& name, const std::string& text) {
    const auto value = parse_integer<int64_t>(name, text, example);
    if (value < low || value > high) {
      const std::string range = high == std::numeric_limits<int64_t>::max()
                                    ? (low == 1 ? "must be positive" : "must be >= " + std::to_string(low))
                                    : "must be between " + std::to_string(low) + " and " + std::to_string(high);
      throw UsageError("--" + name + " " + range + " (got " + text + ")");
    }
    return value;
  };
  return make_spec(row, "integer", access, parse, [](int64_t v) { return std::to_string(v); },
                   [](int64_t v) { return nlohmann::json(v); });
}

template <typename Access>
OptionSpec seed(const Row& row, Access access) {
  const char* example = row.example;
  auto parse = [example](const std::string& name, const std::string& text) {
    return parse_integer<uint64_t>(name, text, example);
  };
  return make_spec(row, "integer >= 0", access, parse, [](uint64_t v) { return std::to_string(v); },
                   [](uint64_t v) { return nlohmann::json(v); });
}

// A batch size that may be left out (0 in Config): derived from the others.
template <typename Access>
OptionSpec optional_size(const Row& row, Access access) {
  const char* example = row.example;
  auto parse = [example](const std::string& name, const std::string& text) {
    const auto value = parse_integer<int64_t>(name, text, example);
    if (value <= 0) throw UsageError("--" + name + " must be positive (got " + text + ")");
    return value;
  };
  return make_spec(row, "integer", access, parse, [](int64_t v) { return v > 0 ? std::to_string(v) : ""; },
                   [](int64_t v) { return v > 0 ? nlohmann::json(v) : nlohmann::json(nullptr); });
}

template <typename Access>
OptionSpec number(const Row& row, Access access, Range range) {
  const char* example = row.example;
  auto parse = [range, example](const std::string& name, const std::string& text) {
    const double value = parse_number(name, text, example);
    if (!range.contains(value)) throw UsageError("--" + name + " " + range.describe() + " (got " + text + ")");
    return value;
  };
  return make_spec(row, "number", access, parse, format_number, [](double v) { return nlohmann::json(v); });
}

template <typename Access>
OptionSpec boolean(const Row& row, Access access) {
  auto parse = [](const std::string& name, const std::string& text) {
    if (text == "true" || text == "yes" || text == "on" || text == "1") return true;
    if (text == "false" || text == "no" || text == "off" || text == "0") return false;
    bad_value(name, text, "true or false");
  };
  return make_spec(row, "true|false", access, parse, [](bool v) { return std::string(v ? "true" : "false"); },
                   [](bool v) { return nlohmann::json(v); });
}

// One of an enum's words (EnumWords in cli/config.h), in the table's order.
template <typename Access>
OptionSpec choice(const Row& row, Access access) {
  using Enum = std::remove_reference_t<std::invoke_result_t<Access, Config&>>;
  std::string accepted;
  for (const auto& [each, word] : EnumWords<Enum>::all) {
    if (!accepted.empty()) accepted += '|';
    accepted += word;  // appended: GCC 12 -O2 warns wrongly on "a" + string (PR 105329)
  }
  auto parse = [accepted](const std::string& name, const std::string& text) {
    for (const auto& [each, word] : EnumWords<Enum>::all) {
      if (text == word) return each;
    }
    throw UsageError("--" + name + " " + printable_excerpt(text) + " is not one of " + accepted);
  };
  return make_spec(row, accepted, access, parse, [](Enum v) { return std::string(to_string(v)); },
                   [](Enum v) { return nlohmann::json(to_string(v)); });
}

// A path or other free text. Optional ones may be empty (unset).
template <typename Access>
OptionSpec text(const Row& row, Access access, bool optional) {
  auto parse = [optional](const std::string& name, const std::string& value) {
    if (!optional && value.empty()) throw UsageError("--" + name + " must not be empty");
    // What an INI line could not carry back: a comment mark, surrounding
    // blanks, control characters.
    const bool blank_edge = !value.empty() && (std::isspace(static_cast<unsigned char>(value.front())) ||
                                               std::isspace(static_cast<unsigned char>(value.back())));
    bool control = false;
    for (unsigned char byte : value) control = control || byte < 0x20 || byte == 0x7f;
    if (value.find('#') != std::string::npos || blank_edge || control) {
      throw UsageError("--" + name + " '" + printable_excerpt(value) +
                       "' holds a '#', a control character or blanks at its ends; choose another path");
    }
    return value;
  };
  return make_spec(row, "path", access, parse, [](const std::string& v) { return v; },
                   [optional](const std::string& v) {
                     return optional && v.empty() ? nlohmann::json(nullptr) : nlohmann::json(v);
                   });
}

template <typename Number>
std::string join(const std::vector<Number>& values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    if constexpr (std::is_floating_point_v<Number>) out += format_number(values[i]);
    else out += std::to_string(values[i]);
  }
  return out;
}

// A comma-separated list; `check(name, values)` validates the whole list.
template <typename Number, typename Access, typename Check>
OptionSpec list(const Row& row, Access access, Check check) {
  const char* example = row.example;
  auto parse = [check, example](const std::string& name, const std::string& text) {
    std::vector<Number> values;
    if (!text.empty()) {
      std::stringstream stream(text);
      std::string item;
      while (std::getline(stream, item, ',')) {
        try {
          if constexpr (std::is_floating_point_v<Number>) values.push_back(parse_number(name, item, example));
          else values.push_back(parse_integer<Number>(name, item, example));
        } catch (const UsageError&) {
          bad_value(name, text, std::string("a comma-separated list of numbers (example: --") + name + " " +
                                    example + ")");
        }
      }
      if (text.back() == ',') bad_value(name, text, "a comma-separated list (it ends with a comma)");
    }
    check(name, values);
    return values;
  };
  return make_spec(row, "list", access, parse, join<Number>,
                   [](const std::vector<Number>& v) { return nlohmann::json(join(v)); });
}

// --micro-batch-size: a batch size, auto (kAutoMicroBatch), or left out (0).
template <typename Access>
OptionSpec size_or_auto(const Row& row, Access access) {
  const char* example = row.example;
  auto parse = [example](const std::string& name, const std::string& text) {
    if (text == "auto") return kAutoMicroBatch;
    const auto value = parse_integer<int64_t>(name, text, example);
    if (value <= 0) throw UsageError("--" + name + " must be positive or auto (got " + text + ")");
    return value;
  };
  auto format = [](int64_t v) { return v == kAutoMicroBatch ? std::string("auto") : v > 0 ? std::to_string(v) : ""; };
  return make_spec(row, "auto|integer", access, parse, format, [](int64_t v) {
    return v == kAutoMicroBatch ? nlohmann::json("auto") : v > 0 ? nlohmann::json(v) : nlohmann::json(nullptr);
  });
}

// --memory-budget: bytes with an optional unit (KiB, MiB, GiB, TiB; KB, MB,
// GB, TB; K, M, G, T binary), a decimal number allowed ("1.5GiB"); 0 in
// Config when left out.
template <typename Access>
OptionSpec memory_size(const Row& row, Access access) {
  auto parse = [](const std::string& name, const std::string& text) {
    static const std::pair<const char*, double> kUnits[] = {
        {"tib", 1099511627776.0}, {"gib", 1073741824.0}, {"mib", 1048576.0}, {"kib", 1024.0},
        {"tb", 1e12}, {"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3},
        {"t", 1099511627776.0}, {"g", 1073741824.0}, {"m", 1048576.0}, {"k", 1024.0}, {"b", 1.0}};
    std::string lower;
    for (char ch : text) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    double unit = 1;
    std::string number = lower;
    for (const auto& [suffix, factor] : kUnits) {
      const size_t length = std::strlen(suffix);
      if (lower.size() > length && lower.compare(lower.size() - length, length, suffix) == 0) {
        number = lower.substr(0, lower.size() - length);
        unit = factor;
        break;
      }
    }
    while (!number.empty() && number.back() == ' ') number.pop_back();
    const char* begin = number.data();
    const char* end = number.data() + number.size();
    double value = 0;
    const auto [stop, error] = std::from_chars(begin, end, value);
    if (error != std::errc() || stop != end || begin == end || !std::isfinite(value)) {
      bad_value(name, text, "a size (examples: --" + name + " 6GiB, 512MiB, 1.5GB, 1000000)");
    }
    const double bytes = std::floor(value * unit);
    if (!(bytes >= 1) || bytes > 9.0e18) {
      throw UsageError("--" + name + " must be at least 1 byte and at most 8 EiB (got " + printable_excerpt(text) + ")");
    }
    return static_cast<int64_t>(bytes);
  };
  auto format = [](int64_t v) {
    if (v <= 0) return std::string();
    static const std::pair<const char*, int64_t> kExact[] = {
        {"TiB", int64_t{1} << 40}, {"GiB", int64_t{1} << 30}, {"MiB", int64_t{1} << 20}, {"KiB", int64_t{1} << 10}};
    for (const auto& [suffix, factor] : kExact) {
      if (v % factor == 0) return std::to_string(v / factor) + suffix;
    }
    return std::to_string(v);
  };
  return make_spec(row, "size", access, parse, format,
                   [](int64_t v) { return v > 0 ? nlohmann::json(v) : nlohmann::json(nullptr); });
}

// --threads: a count, or auto (0 in Config).
template <typename Access>
OptionSpec count_or_auto(const Row& row, Access access, int high) {
  const char* example = row.example;
  auto parse = [high, example](const std::string& name, const std::string& text) {
    if (text == "auto") return 0;
    const auto value = parse_integer<int64_t>(name, text, example);
    if (value < 1 || value > high) {
      throw UsageError("--" + name + " must be auto or between 1 and " + std::to_string(high) + " (got " + text + ")");
    }
    return static_cast<int>(value);
  };
  auto format = [](int v) { return v == 0 ? std::string("auto") : std::to_string(v); };
  return make_spec(row, "auto|integer", access, parse, format,
                   [](int v) { return v == 0 ? nlohmann::json("auto") : nlohmann::json(v); });
}

// --eps: a positive number, or auto (0 in Config; resolved per optimizer).
template <typename Access>
OptionSpec number_or_auto(const Row& row, Access access) {
  const char* example = row.example;
  auto parse = [example](const std::string& name, const std::string& text) {
    if (text == "auto") return 0.0;
    const double value = parse_number(name, text, example);
    if (value <= 0) throw UsageError("--" + name + " must be auto or positive (got " + text + ")");
    return value;
  };
  auto format = [](double v) { return v == 0 ? std::string("auto") : format_number(v); };
  return make_spec(row, "auto|number", access, parse, format,
                   [](double v) { return v == 0 ? nlohmann::json("auto") : nlohmann::json(v); });
}

// --target METRIC:VALUE.
template <typename Access>
OptionSpec target(const Row& row, Access access) {
  static const char* const kMetrics[] = {"val_accuracy", "val_loss",      "test_accuracy",
                                         "test_loss",    "train_accuracy", "train_loss"};
  auto parse = [](const std::string& name, const std::string& text) {
    Target parsed;
    if (text.empty()) return parsed;
    const size_t colon = text.find(':');
    const std::string usage = "; write METRIC:VALUE, e.g. --" + name +
                              " val_accuracy:0.88 (metrics: val_accuracy, val_loss, test_accuracy, test_loss, "
                              "train_accuracy, train_loss)";
    if (colon == std::string::npos) throw UsageError("--" + name + " '" + printable_excerpt(text) + "' has no ':'" + usage);
    parsed.metric = text.substr(0, colon);
    if (std::find(std::begin(kMetrics), std::end(kMetrics), parsed.metric) == std::end(kMetrics)) {
      throw UsageError("--" + name + " names an unknown metric '" + printable_excerpt(parsed.metric) + "'" + usage);
    }
    try {
      parsed.value = parse_number(name, text.substr(colon + 1), "0.88");
    } catch (const UsageError&) {
      throw UsageError("--" + name + " '" + printable_excerpt(text) + "' has no number after ':'" + usage);
    }
    const bool accuracy = !parsed.lower_is_better();
    if (accuracy ? (parsed.value <= 0 || parsed.value > 1) : parsed.value <= 0) {
      throw UsageError("--" + name + " " + printable_excerpt(text) + ": an accuracy target must be in (0, 1], a loss "
                       "target positive");
    }
    return parsed;
  };
  auto format = [](const Target& t) { return t.metric.empty() ? std::string() : t.metric + ":" + format_number(t.value); };
  return make_spec(row, "METRIC:VALUE", access, parse, format, [format](const Target& t) {
    return t.metric.empty() ? nlohmann::json(nullptr) : nlohmann::json(format(t));
  });
}

// --eval-schedule fixed|geometric:K (0 in Config for fixed).
template <typename Access>
OptionSpec eval_schedule(const Row& row, Access access) {
  auto parse = [](const std::string& name, const std::string& text) -> int64_t {
    if (text == "fixed") return 0;
    const std::string usage = "fixed (--eval-every and each epoch's end) or geometric:K, about K evaluations per "
                              "doubling of the step count (e.g. geometric:8)";
    if (text.rfind("geometric:", 0) != 0) bad_value(name, text, usage);
    const std::string count = text.substr(10);
    int64_t k = 0;
    const auto [stop, error] = std::from_chars(count.data(), count.data() + count.size(), k);
    if (error != std::errc() || stop != count.data() + count.size() || k < 1 || k > 1000) {
      bad_value(name, text, usage + " with K between 1 and 1000");
    }
    return k;
  };
  auto format = [](int64_t k) { return k == 0 ? std::string("fixed") : "geometric:" + std::to_string(k); };
  return make_spec(row, "fixed|geometric:K", access, parse, format, [format](int64_t k) { return nlohmann::json(format(k)); });
}

// --batch-schedule constant|rampup:START:INCREMENT:SAMPLES|adaptive[:START].
// The arithmetic against the global batch and the split is checked where the
// split is known (data/batch_schedule.h).
template <typename Access>
OptionSpec batch_schedule(const Row& row, Access access) {
  auto parse = [](const std::string& name, const std::string& text) {
    const std::string usage = "constant, rampup:START:INCREMENT:SAMPLES (e.g. rampup:32:32:200000) or adaptive[:START]";
    BatchSchedulePlan plan;
    std::vector<std::string> parts;
    size_t begin = 0;
    while (true) {
      const size_t colon = text.find(':', begin);
      parts.push_back(text.substr(begin, colon == std::string::npos ? std::string::npos : colon - begin));
      if (colon == std::string::npos) break;
      begin = colon + 1;
    }
    auto count = [&](const std::string& part, const char* what) {
      int64_t value = 0;
      const auto [stop, error] = std::from_chars(part.data(), part.data() + part.size(), value);
      if (error != std::errc() || stop != part.data() + part.size() || part.empty() || value < 1) {
        throw UsageError("--" + name + " '" + printable_excerpt(text) + "': " + what + " must be a positive integer; write " + usage);
      }
      return value;
    };
    if (parts[0] == "constant" && parts.size() == 1) return plan;
    if (parts[0] == "rampup" && parts.size() == 4) {
      plan.kind = BatchScheduleKind::Rampup;
      plan.start = count(parts[1], "START");
      plan.increment = count(parts[2], "INCREMENT");
      plan.samples = count(parts[3], "SAMPLES");
      return plan;
    }
    if (parts[0] == "adaptive" && parts.size() <= 2) {
      plan.kind = BatchScheduleKind::Adaptive;
      if (parts.size() == 2) plan.start = count(parts[1], "START");
      return plan;
    }
    bad_value(name, text, usage);
  };
  auto format = [](const BatchSchedulePlan& p) {
    switch (p.kind) {
      case BatchScheduleKind::Constant: return std::string("constant");
      case BatchScheduleKind::Rampup:
        return "rampup:" + std::to_string(p.start) + ":" + std::to_string(p.increment) + ":" + std::to_string(p.samples);
      case BatchScheduleKind::Adaptive: return p.start > 0 ? "adaptive:" + std::to_string(p.start) : std::string("adaptive");
    }
    return std::string("?");
  };
  return make_spec(row, "constant|rampup:START:INCREMENT:SAMPLES|adaptive[:START]", access, parse, format,
                   [format](const BatchSchedulePlan& p) { return nlohmann::json(format(p)); });
}

#define DTRAIN_FIELD(path) [](Config & c) -> auto& { return c.path; }

std::vector<OptionSpec> build_table() {
  using E = Effect;
  return {
      // Batch.
      size_or_auto({"micro-batch-size", "batch", E::Rounding, "64",
                    "samples per rank per forward/backward pass; auto: the largest that divides the global batch "
                    "per rank and fits --memory-budget (needs --global-batch-size)"},
                   DTRAIN_FIELD(batch.micro_batch_size)),
      optional_size({"grad-accum-steps", "batch", E::Rounding, "4",
                     "micro-batches accumulated per optimizer step (1 unless derived)"},
                    DTRAIN_FIELD(batch.grad_accum_steps)),
      optional_size({"global-batch-size", "batch", E::Exact, "1024",
                     "samples per optimizer step across all ranks"},
                    DTRAIN_FIELD(batch.global_batch_size)),
      memory_size({"memory-budget", "batch", E::Rounding, "6GiB",
                   "bytes one rank's training step may use (e.g. 6GiB, 512MiB); a micro-step past it runs out of "
                   "memory and is redone with half the micro-batch (on CUDA: the caching allocator's memory "
                   "fraction). Default: none on CPU; on CUDA the whole device, and for auto its free memory less 10%"},
                  DTRAIN_FIELD(batch.memory_budget)),
      batch_schedule({"batch-schedule", "batch", E::Exact, "rampup:32:32:200000",
                      "the global batch over the run: constant (--global-batch-size), rampup:START:INCREMENT:SAMPLES "
                      "(Megatron's ramp: START, plus INCREMENT each SAMPLES / ((G - START) / INCREMENT) samples, up to "
                      "G) or adaptive[:START] (grown at each evaluation toward --adaptive-batch-factor x the online "
                      "B_simple, never shrunk, capped by G; needs --noise-scale). Positions, warmup and decay then "
                      "count samples"},
                     DTRAIN_FIELD(batch.schedule)),
      choice({"batch-schedule-lr", "batch", E::Exact, "fixed",
              "under a changing batch: scale (the LR follows --lr-scaling at each batch) or fixed (the LR "
              "scheduled for the final batch throughout, as Megatron does)"},
             DTRAIN_FIELD(batch.schedule_lr)),
      number({"adaptive-batch-factor", "batch", E::Exact, "2",
              "--batch-schedule adaptive: the batch grows to the largest allowed <= this x B_simple"},
             DTRAIN_FIELD(batch.adaptive_factor), kPositive),

      // Learning rate.
      number({"lr", "lr", E::Exact, "0.2", "learning rate at the reference batch --base-batch-size"},
             DTRAIN_FIELD(lr.lr), kPositive),
      integer({"base-batch-size", "lr", E::Exact, "128", "reference batch of --lr"}, DTRAIN_FIELD(lr.base_batch_size),
              1),
      choice({"lr-scaling", "lr", E::Exact, "sqrt", "peak LR = lr x f(global/base): linear, sqrt or none"},
             DTRAIN_FIELD(lr.scaling)),
      integer({"warmup-steps", "lr", E::Exact, "100", "optimizer steps of linear warmup from lr to the peak"},
              DTRAIN_FIELD(lr.warmup_steps), 0),
      number({"warmup-epochs", "lr", E::Exact, "2.5", "warmup length in epochs (converted to steps)"},
             DTRAIN_FIELD(lr.warmup_epochs), Range{0, 1e6}),
      choice({"schedule", "lr", E::Exact, "cosine", "after warmup: constant, cosine, linear or step"},
             DTRAIN_FIELD(lr.schedule)),
      list<double>({"lr-milestones", "lr", E::Exact, "30,60",
                    "step schedule: epochs at which the LR is multiplied by --lr-gamma"},
                   DTRAIN_FIELD(lr.milestones_epochs),
                   [](const std::string& name, const std::vector<double>& epochs) {
                     for (size_t i = 0; i < epochs.size(); ++i) {
                       if (epochs[i] <= 0 || (i > 0 && epochs[i] <= epochs[i - 1])) {
                         throw UsageError("--" + name + " must be positive and increasing (epochs, e.g. 30,60,80)");
                       }
                     }
                   }),
      number({"lr-gamma", "lr", E::Exact, "0.5", "step schedule decay factor"}, DTRAIN_FIELD(lr.gamma),
             Range{0, 1, true, false}),
      number({"min-lr", "lr", E::Exact, "0.001", "final LR of the cosine and linear schedules"},
             DTRAIN_FIELD(lr.min_lr), kNonNegative),

      // Optimizer.
      choice({"optimizer", "optimizer", E::Exact, "adamw",
              "sgd, adamw, lars (SGD with layer-wise trust ratios) or lamb (Adam with layer-wise trust ratios)"},
             DTRAIN_FIELD(optimizer.kind)),
      number({"momentum", "optimizer", E::Exact, "0.8", "SGD and LARS momentum"}, DTRAIN_FIELD(optimizer.momentum),
             Range{0, 1, false, true}),
      boolean({"nesterov", "optimizer", E::Exact, "true", "SGD Nesterov momentum"}, DTRAIN_FIELD(optimizer.nesterov)),
      number({"weight-decay", "optimizer", E::Exact, "0.0005",
              "L2 penalty (SGD, LARS), decoupled weight decay (AdamW) or LAMB's decay term; LARS and LAMB exempt "
              "parameters of 1 dimension or less"},
             DTRAIN_FIELD(optimizer.weight_decay), kNonNegative),
      list<double>({"betas", "optimizer", E::Exact, "0.8,0.95", "AdamW and LAMB betas, two comma-separated numbers"},
                   DTRAIN_FIELD(optimizer.betas),
                   [](const std::string& name, const std::vector<double>& betas) {
                     if (betas.size() != 2 || betas[0] < 0 || betas[0] >= 1 || betas[1] < 0 || betas[1] >= 1) {
                       throw UsageError("--" + name + " needs two numbers in [0, 1), e.g. 0.9,0.999");
                     }
                   }),
      number_or_auto({"eps", "optimizer", E::Exact, "1e-07", "AdamW and LAMB epsilon; auto: 1e-8 for AdamW, 1e-6 for LAMB"},
                     DTRAIN_FIELD(optimizer.eps)),
      number({"trust-coefficient", "optimizer", E::Exact, "0.01",
              "LARS trust coefficient eta: the layer's step is eta x |w| / |g + weight_decay w| times the LR"},
             DTRAIN_FIELD(optimizer.trust_coefficient), kPositive),
      number({"grad-clip-norm", "optimizer", E::Exact, "1", "clip the global gradient norm to this (0: off)"},
             DTRAIN_FIELD(optimizer.grad_clip_norm), kNonNegative),

      // Run.
      integer({"epochs", "run", E::Exact, "90", "passes over the training set; the LR schedule's horizon"},
              DTRAIN_FIELD(run.epochs), 0),
      integer({"max-steps", "run", E::None, "500",
               "stop after this many optimizer steps (0: no limit); the schedule still ends at --epochs"},
              DTRAIN_FIELD(run.max_steps), 0),
      seed({"seed", "run", E::Exact, "7", "seed of the initial weights and the sample order"}, DTRAIN_FIELD(run.seed)),
      boolean({"shuffle", "run", E::Exact, "false", "reshuffle the training set each epoch"},
              DTRAIN_FIELD(run.shuffle)),
      choice({"precision", "run", E::Exact, "bf16-mixed",
              "fp32 (TF32 off), tf32 (TF32 matmuls and convolutions on a GPU), bf16-mixed (forward and loss under "
              "bfloat16 autocast; weights, gradients and optimizer state stay fp32; slow on a CPU without bf16 "
              "instructions), or auto (bf16-mixed on a GPU with bf16 tensor cores, else fp32)"},
             DTRAIN_FIELD(run.precision)),
      text({"out-dir", "run", E::None, "runs/example",
            "where rank 0 writes config.json, metrics.jsonl and summary.json"},
           DTRAIN_FIELD(run.out_dir), /*optional=*/false),
      integer({"log-every", "run", E::None, "10", "optimizer steps between progress lines and metrics records"},
              DTRAIN_FIELD(run.log_every), 1),
      integer({"eval-every", "run", E::None, "200", "optimizer steps between evaluations (0: end of each epoch only)"},
              DTRAIN_FIELD(run.eval_every), 0),
      count_or_auto({"threads", "run", E::Rounding, "4",
                     "intra-op CPU threads per rank; auto: OMP_NUM_THREADS, else this rank's share of its CPUs"},
                    DTRAIN_FIELD(run.threads), 1024),

      // Data and model.
      choice({"dataset", "data", E::Exact, "synthetic",
              "fashion-mnist, synthetic, kjv (the King James Bible, for --model gpt) or text (--data-file)"},
             DTRAIN_FIELD(data.dataset)),
      text({"data-file", "data", E::Exact, "corpus.txt", "--dataset text: a text file, one document per line"},
           DTRAIN_FIELD(data.data_file), /*optional=*/true),
      boolean({"pack", "data", E::Exact, "true",
               "text datasets: concatenate the training documents into full --block-size rows (no padding) "
               "instead of one document per row; validation stays whole documents"},
              DTRAIN_FIELD(data.pack)),
      text({"data-dir", "data", E::Exact, "/data/fashion-mnist", "folder with Fashion-MNIST's *-ubyte.gz files"},
           DTRAIN_FIELD(data.data_dir), /*optional=*/false),
      integer({"synthetic-train-samples", "data", E::Exact, "1024", "synthetic training set size"},
              DTRAIN_FIELD(data.synthetic_train_samples), 1),
      integer({"synthetic-test-samples", "data", E::Exact, "512", "synthetic test set size"},
              DTRAIN_FIELD(data.synthetic_test_samples), 1),
      integer({"synthetic-classes", "data", E::Exact, "4", "synthetic number of classes"},
              DTRAIN_FIELD(data.synthetic_classes), 2, 1 << 20),
      seed({"synthetic-seed", "data", E::Exact, "5", "seed of the synthetic inputs and teacher network"},
           DTRAIN_FIELD(data.synthetic_seed)),
      integer({"validation-size", "data", E::Exact, "5000",
               "training samples (text datasets: whole documents) held out as a validation split (chosen by --seed, "
               "excluded from training); 0: none"},
              DTRAIN_FIELD(data.validation_size), 0),
      choice({"model", "data", E::Exact, "cnn", "mlp, cnn, simple-cnn (Shallue et al. 2018's Simple CNN: two 5x5 convolutions, 32 and 64 filters, "
              "and 1024 dense units) or gpt (a decoder-only transformer; text datasets)"},
             DTRAIN_FIELD(model.kind)),
      integer({"n-layer", "data", E::Exact, "6", "--model gpt: transformer blocks"}, DTRAIN_FIELD(model.n_layer), 1, 1024),
      integer({"n-head", "data", E::Exact, "8", "--model gpt: attention heads (divide --n-embd)"},
              DTRAIN_FIELD(model.n_head), 1, 4096),
      integer({"n-embd", "data", E::Exact, "256", "--model gpt: embedding width"}, DTRAIN_FIELD(model.n_embd), 1, int64_t{1} << 16),
      integer({"block-size", "data", E::Exact, "256",
               "--model gpt: context length in bytes; text datasets cut longer documents into rows of this size"},
              DTRAIN_FIELD(model.block_size), 1, int64_t{1} << 20),
      // The example is auto: blocks alone (with the default --model mlp) is refused.
      choice({"activation-checkpointing", "data", E::Rounding, "auto",
              "--model gpt: none, blocks (keep each block's input, recompute the block in backward: less memory, "
              "about one more forward), or auto (with --micro-batch-size auto: both probed, the faster kept; "
              "otherwise none)"},
             DTRAIN_FIELD(model.activation_checkpointing)),
      list<int64_t>({"hidden", "data", E::Exact, "1024,1024", "MLP hidden widths, comma-separated"},
                    DTRAIN_FIELD(model.hidden),
                    [](const std::string& name, const std::vector<int64_t>& widths) {
                      for (int64_t width : widths) {
                        if (width <= 0 || width > (int64_t{1} << 24)) {
                          throw UsageError("--" + name + " widths must be positive and at most 16777216");
                        }
                      }
                    }),

      // Distributed.
      choice({"backend", "distributed", E::Rounding, "mpi", "collectives: auto (NCCL on GPUs, MPI on CPUs), nccl or mpi"},
             DTRAIN_FIELD(distributed.backend)),
      choice({"device", "distributed", E::Rounding, "cpu", "auto, cpu or cuda (the GPU of this rank's local rank)"},
             DTRAIN_FIELD(distributed.device)),
      number({"bucket-cap-mb", "distributed", E::Rounding, "4",
              "gradient bucket size in MiB (the first bucket is at most 1 MiB)"},
             DTRAIN_FIELD(distributed.bucket_cap_mb), Range{0, 1e6, true, false}),
      choice({"overlap", "distributed", E::Rounding, "false",
              "start each bucket's all-reduce during backward: auto (on with NCCL; with MPI when a rank has 2+ CPUs), "
              "true or false"},
             DTRAIN_FIELD(distributed.overlap)),
      choice({"grad-reduce-dtype", "distributed", E::Exact, "bf16",
              "all-reduce gradients as fp32, bf16 or fp16 (accumulated back in fp32)"},
             DTRAIN_FIELD(distributed.grad_reduce_dtype)),

      choice({"shard-optimizer-state", "distributed", E::Rounding, "true",
              "ZeRO-1: reduce-scatter gradients, each rank updates and keeps optimizer state for 1/world of the "
              "parameters, then all-gather them: true, false, or auto (true when world > 1 and the optimizer keeps "
              "state)"},
             DTRAIN_FIELD(distributed.shard_optimizer_state)),

      // Weights.
      text({"init-from", "weights", E::Exact, "w.pt",
            "start from these weights (dtrain --export output or PyTorch torch.save(state_dict))"},
           DTRAIN_FIELD(init_from), /*optional=*/true),
      text({"export", "weights", E::None, "final.pt",
            "write the final weights here (torch.load reads them as a name -> tensor dict)"},
           DTRAIN_FIELD(export_path), /*optional=*/true),

      // Checkpoints and failures. None of them touches the trajectory: a run
      // may resume with other checkpoint settings.
      integer({"checkpoint-every", "checkpoint", E::None, "500", "write a checkpoint every N optimizer steps (0: off)"},
              DTRAIN_FIELD(checkpoint.every_steps), 0),
      number({"checkpoint-every-minutes", "checkpoint", E::None, "30",
              "also write one when this many minutes passed since the last (0: off); whichever comes first"},
             DTRAIN_FIELD(checkpoint.every_minutes), Range{0, 1e7}),
      text({"checkpoint-dir", "checkpoint", E::None, "/scratch/run1/checkpoints",
            "where checkpoints go (default: OUT_DIR/checkpoints)"},
           DTRAIN_FIELD(checkpoint.dir), /*optional=*/true),
      integer({"keep-checkpoints", "checkpoint", E::None, "3", "newest checkpoints kept; older ones are deleted"},
              DTRAIN_FIELD(checkpoint.keep), 1),
      text({"resume", "checkpoint", E::None, "auto",
            "never (refuse a checkpoint dir that holds checkpoints), auto (newest valid one, else start fresh) "
            "or the path of a step-N checkpoint folder"},
           DTRAIN_FIELD(checkpoint.resume), /*optional=*/false),
      choice({"on-nonfinite", "checkpoint", E::None, "skip",
              "a non-finite loss or gradient: stop (exit 3, status diverged), skip the update (stop after 10 in a "
              "row), or ignore (no check: saves one pass over the gradients per step)"},
             DTRAIN_FIELD(failure.on_nonfinite)),
      number({"collective-timeout", "checkpoint", E::None, "120",
              "seconds a collective may wait for the other ranks before the job is aborted (0: wait forever)"},
             DTRAIN_FIELD(distributed.collective_timeout), Range{0, 1e7}),

      // Batch-size studies (docs/studies.md). Measurements and when to stop:
      // none touches the trajectory.
      target({"target", "study", E::None, "test_accuracy:0.88",
              "METRIC:VALUE to reach (val_/test_/train_ accuracy or loss; lower is better for losses): summary.json "
              "records steps_to_target and samples_to_target"},
             DTRAIN_FIELD(study.target)),
      boolean({"stop-at-target", "study", E::None, "true", "end the run at the first evaluation that meets --target"},
              DTRAIN_FIELD(study.stop_at_target)),
      eval_schedule({"eval-schedule", "study", E::None, "geometric:8",
                     "fixed (--eval-every and epoch ends) or geometric:K (also about K evaluations per doubling of "
                     "steps: steps-to-target within a factor 2^(1/K))"},
                    DTRAIN_FIELD(study.eval_per_doubling)),
      choice({"eval-splits", "study", E::None, "target",
              "what an evaluation before the final one reads: all (the validation and test splits and the "
              "train subset) or target (only the split --target reads; the final evaluation, and the one that "
              "stops a run at its target, read all)"},
             DTRAIN_FIELD(study.eval_splits)),
      boolean({"noise-scale", "study", E::None, "true",
               "estimate the gradient noise scale B_simple online (McCandlish et al. 2018) and log it; needs world x "
               "accumulation >= 2"},
              DTRAIN_FIELD(study.noise_scale)),
      number({"noise-scale-ema", "study", E::None, "0.9", "decay of the noise scale's bias-corrected moving averages"},
             DTRAIN_FIELD(study.noise_scale_ema), Range{0, 1, false, true}),
      integer({"measure-noise-scale", "study", E::None, "100",
               "measure B_simple over this many global batches at fixed weights (--init-from or --resume), with no "
               "update, print it with a 95% interval and exit (0: train)"},
              DTRAIN_FIELD(study.measure_noise_scale), 0),
      integer({"measure-sharpness", "study", E::None, "2048",
               "measure the sharpness (the top eigenvalue of the training loss's Hessian, with its sign) over the "
               "first N training samples at fixed weights (--init-from or --resume), write sharpness.json and exit "
               "(0: train)"},
              DTRAIN_FIELD(study.measure_sharpness), 0),
      integer({"sharpness-at-end", "study", E::None, "2048",
               "after the final evaluation, measure the sharpness over the first N training samples and add it to "
               "summary.json (0: no)"},
              DTRAIN_FIELD(study.sharpness_at_end), 0),
      integer({"sharpness-iterations", "study", E::None, "50", "power iterations of a sharpness measurement at most"},
              DTRAIN_FIELD(study.sharpness_iterations), 1),
      number({"sharpness-tolerance", "study", E::None, "0.0001",
              "a sharpness measurement stops when its estimate changes by less than this, relative (0: run every "
              "iteration)"},
             DTRAIN_FIELD(study.sharpness_tolerance), Range{0, 1}),
  };
}

#undef DTRAIN_FIELD

}  // namespace

const std::vector<OptionSpec>& option_table() {
  static const std::vector<OptionSpec> table = build_table();
  return table;
}

const std::vector<OptionGroup>& option_groups() {
  static const std::vector<OptionGroup> groups = {
      {"batch", "Batch (global = micro x accum x world; give any two; those on the command line override the file's as a group)"},
      {"lr", "Learning rate"},
      {"optimizer", "Optimizer"},
      {"run", "Run"},
      {"data", "Data and model"},
      {"distributed", "Distributed"},
      {"weights", "Weights"},
      {"checkpoint", "Checkpoints, preemption and failures"},
      {"study", "Batch-size studies"},
  };
  return groups;
}

}  // namespace dtrain
