{
  description = "A tiny flake for trying Gradient: no nixpkgs, only /bin/sh built-ins";

  outputs = { self }:
    let
      system = "x86_64-linux";
      # Every derivation runs a shell script with /bin/sh, which the
      # sandbox provides (sandbox-paths = /bin/sh=/bin/busybox).
      script = name: text: deps: builtins.derivation {
        inherit name system deps;
        builder = "/bin/sh";
        args = [ "-c" text ];
      };
      greeting = script "greeting-1.0" ''
        echo "Hello from a Gradient build" > $out
      '' [ ];
      hello = script "hello-1.0" ''
        read line < ${greeting}
        echo "$line, and hello" > $out
      '' [ greeting ];
    in
    {
      packages.${system} = {
        inherit greeting hello;
        default = hello;
      };
      checks.${system}.hello-says-hello = script "hello-says-hello" ''
        read line < ${hello}
        case "$line" in Hello*) echo ok > $out ;; *) echo "unexpected: $line" >&2; exit 1 ;; esac
      '' [ hello ];
    };
}
