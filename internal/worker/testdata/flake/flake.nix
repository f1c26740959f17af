{
  description = "Test flake for the worker: a chain, a diamond, a failing build and broken attributes.";

  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = name: deps: builtins.derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" "echo ${name} ${toString deps} > $out" ];
      };

      # A diamond: top depends on left and right, which both depend on base.
      base = mk "base" [ ];
      left = mk "left" [ base ];
      right = mk "right" [ base ];
      top = mk "top" [ left right ];

      # A chain: chain3 -> chain2 -> chain1.
      chain1 = mk "chain1" [ ];
      chain2 = mk "chain2" [ chain1 ];
      chain3 = mk "chain3" [ chain2 ];

      multi = builtins.derivation {
        inherit system;
        name = "multi";
        outputs = [ "out" "dev" ];
        builder = "/bin/sh";
        args = [ "-c" "echo lib > $out; echo $out > $dev" ];
        requiredSystemFeatures = [ ];
      };
    in
    {
      packages.${system} = {
        inherit top chain3 multi;
        fail = builtins.derivation {
          inherit system;
          name = "fail";
          builder = "/bin/sh";
          args = [ "-c" "echo about to fail; exit 1" ];
        };
        # builtins.tryEval catches a throw.
        throws = throw "this attribute is broken on purpose";
        # builtins.tryEval does not catch a missing attribute.
        missing = { }.nothere;
      };

      checks.${system} = {
        nested.deeper.leaf = base;
        direct = chain1;
      };

      notAPackage = "just a string";
    };
}
