// Errors raised by moe-eplb: one exception type with a code the bindings map
// onto their own error classes (ValueError, IndexError, ...), and one check
// macro that records file and line next to a message users can act on.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moe_eplb {

enum class ErrorCode : std::uint8_t {
  kInvalidArgument,  // shape, dtype, rank, limit or option problem
  kIndexOutOfRange,  // a data value indexes outside its range (bad expert id, bad count, ...)
  kInvalidTable,     // validate_table() found problems; the message lists them all
  kIo,               // file could not be read or written, or is not a valid .npy
  kCuda,             // a CUDA runtime call failed
};

// Thrown by every moe-eplb entry point. what() is the user-facing message and
// starts with the operation, e.g. "update_expert(): ...". file()/line() say
// where the check lives, for bug reports.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, const char* file = "", int line = 0)
      : std::runtime_error(message), code_(code), file_(file), line_(line) {}

  ErrorCode code() const noexcept { return code_; }
  const char* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  ErrorCode code_;
  const char* file_;
  int line_;
};

namespace detail {

template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream stream;
  (stream << ... << std::forward<Parts>(parts));
  return stream.str();
}

[[noreturn]] inline void throw_error(ErrorCode code, const char* file, int line,
                                     const std::string& message) {
  throw Error(code, message, file, line);
}

}  // namespace detail
}  // namespace moe_eplb

// MOE_EPLB_CHECK(cond, code, parts...): throws moe_eplb::Error(code) with the
// parts streamed into one message when cond is false.
#define MOE_EPLB_CHECK_CODE(cond, code, ...)                                    \
  do {                                                                          \
    if (!(cond)) {                                                              \
      ::moe_eplb::detail::throw_error((code), __FILE__, __LINE__,               \
                                      ::moe_eplb::detail::concat(__VA_ARGS__)); \
    }                                                                           \
  } while (0)

#define MOE_EPLB_CHECK(cond, ...) \
  MOE_EPLB_CHECK_CODE(cond, ::moe_eplb::ErrorCode::kInvalidArgument, __VA_ARGS__)

#define MOE_EPLB_CHECK_INDEX(cond, ...) \
  MOE_EPLB_CHECK_CODE(cond, ::moe_eplb::ErrorCode::kIndexOutOfRange, __VA_ARGS__)

#define MOE_EPLB_FAIL(code, ...)                              \
  ::moe_eplb::detail::throw_error((code), __FILE__, __LINE__, \
                                  ::moe_eplb::detail::concat(__VA_ARGS__))
