// libFuzzer harness: any string for any option on the command line. The
// first byte picks the option (the table's rows in order), the rest is the
// value. A value that parses must read back as itself: its text, given
// again, gives the same configuration.
#include "cli/option_table.h"
#include "cli/options.h"
#include "common/error.h"
#include "fuzz_check.h"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& table = dtrain::option_table();
  const dtrain::OptionSpec& spec = table[data[0] % table.size()];
  const std::string value(reinterpret_cast<const char*>(data + 1), size - 1);
  dtrain::Config config;
  try {
    config = dtrain::parse_options({"--" + spec.name, value}).config;
  } catch (const dtrain::Error& e) {
    dtrain::fuzz::check_message(e.what());
    return 0;
  }
  const std::string text = spec.text(config);
  const dtrain::Config again = dtrain::parse_options({"--" + spec.name, text}).config;
  if (spec.text(again) != text || dtrain::config_to_json(again) != dtrain::config_to_json(config)) __builtin_trap();
  return 0;
}
