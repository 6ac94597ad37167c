// Force-included into mlx-c's translation units. mlx-c formats error messages with std::format, using only
// "{}" placeholders; libstdc++ ships std::format from GCC 13, and Debian 12 has GCC 12. Active only when the
// standard library lacks it.
#pragma once
#include <version>
#if defined(__cplusplus) && !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
template <class... Args>
inline string format(string_view fmt, const Args&... args) {
  ostringstream out;
  size_t pos = 0;
  auto put = [&](const auto& arg) {
    size_t at = fmt.find("{}", pos);
    if (at == string_view::npos) return;
    out << fmt.substr(pos, at - pos) << arg;
    pos = at + 2;
  };
  (put(args), ...);
  out << fmt.substr(pos);
  return out.str();
}
}  // namespace std
#endif
