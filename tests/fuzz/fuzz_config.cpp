// libFuzzer harness: INI text through the same code as --config. A parsed
// configuration or one clean UsageError. A configuration that parses must
// also survive --dump-config: dumped and parsed again, it is the same.
#include "cli/options.h"
#include "common/error.h"
#include "fuzz_check.h"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  dtrain::ParsedOptions parsed;
  try {
    parsed = dtrain::parse_config_text(text, "fuzz.ini");
  } catch (const dtrain::Error& e) {
    dtrain::fuzz::check_message(e.what());
    return 0;
  }
  const dtrain::ParsedOptions again = dtrain::parse_config_text(dtrain::dump_config(parsed), "dump.ini");
  if (dtrain::config_to_json(again.config) != dtrain::config_to_json(parsed.config) ||
      dtrain::launch_hash(again.config) != dtrain::launch_hash(parsed.config)) {
    __builtin_trap();
  }
  return 0;
}
