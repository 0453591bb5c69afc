// What every fuzz harness asserts about an error: the one clean line that a
// user would see. A message that fails these checks aborts the run, so the
// fuzzer keeps the input as a finding.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>

namespace dtrain::fuzz {

inline void check_message(const std::string& message) {
  bool clean = !message.empty() && message.size() <= 500;
  for (unsigned char byte : message) clean = clean && byte >= 0x20 && byte < 0x7f;
  // A message that is only an exception's name or a library function's
  // ("std::bad_alloc", "basic_string::_M_create", "stoll") says nothing. The
  // harnesses' messages start with an option or a file name.
  for (const char* bare : {"std::", "basic_string::", "vector::", "map::", "sto"}) {
    clean = clean && message.rfind(bare, 0) != 0;
  }
  if (!clean) {
    std::fprintf(stderr, "fuzz: unclean error message (%zu bytes): %.300s\n", message.size(), message.c_str());
    std::abort();
  }
}

}  // namespace dtrain::fuzz
