{
  "targets": [
    {
      "target_name": "ublk_ts",
      "sources": [
        "native/addon.cpp",
        "native/batch_queue.cpp",
        "native/control.cpp",
        "native/errors.cpp",
        "native/files.cpp",
        "native/js_queue.cpp",
        "native/process.cpp",
        "native/queue.cpp",
        "native/queue_thread.cpp",
        "native/targets.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "<!@(pkg-config --cflags liburing)"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags!": ["-fno-exceptions"],
      "libraries": ["<!@(pkg-config --libs liburing)", "-lpthread"]
    }
  ]
}
