# Lists the attributes below args.root in a flake's outputs that match
# Gradient's entry point patterns, evaluating the drvPath of each matching
# derivation. The worker calls it with the flake's outputs and with args:
#
#   root     attribute path to start from, a list of names
#   patterns list of patterns, each a list of segments { k; n; }, where k
#            is "name" (n is the name), "one" (*) or "any" (**)
#   strict   false: builtins.tryEval catches throws and asserts, and the
#            attribute is reported with error = true; true: errors abort,
#            so that nix prints the message for that attribute
#   list     optional; true: report matching derivations as
#            { path; listed = true; } without evaluating their drvPath
#
# It returns a list of { path; drvPath; } for derivations, { path; error; }
# for caught errors and { path; other; } for matches that are not
# derivations, with other naming the value's type. An attribute set that is
# not a derivation is reported only when a pattern names it explicitly:
# the pattern has no "**" and ends in a name. It does not descend into
# derivations, and it descends into an attribute set only while a pattern
# can match below it.
outputs: args:
let
  inherit (builtins) any attrNames concatMap elem elemAt foldl' genList isAttrs length tryEval typeOf;

  patterns = args.patterns;
  count = length patterns;

  # The positions reachable from pos without consuming a name: "**" may
  # match zero names.
  closure = p: pos:
    if pos < length p && (elemAt p pos).k == "any"
    then [ pos ] ++ closure p (pos + 1)
    else [ pos ];

  dedupe = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];

  advanceOne = p: name: pos:
    if pos >= length p then [ ]
    else
      let s = elemAt p pos; in
      if s.k == "any" then closure p pos
      else if s.k == "one" || s.n == name then closure p (pos + 1)
      else [ ];

  # A state holds, for each pattern, the positions it can be at.
  advance = state: name:
    genList (i: dedupe (concatMap (advanceOne (elemAt patterns i) name) (elemAt state i))) count;

  initial = genList (i: closure (elemAt patterns i) 0) count;

  matchesAny = indices: state: any (i: elem (length (elemAt patterns i)) (elemAt state i)) indices;

  matches = matchesAny (genList (i: i) count);

  # The patterns that end in a name and have no "**".
  explicitPatterns = builtins.filter
    (i:
      let p = elemAt patterns i; in
      length p > 0 && (elemAt p (length p - 1)).k == "name" && !(any (s: s.k == "any") p))
    (genList (i: i) count);

  explicit = matchesAny explicitPatterns;

  live = state: any (positions: positions != [ ]) state;

  try = if args.strict then (x: { success = true; value = x; }) else tryEval;

  isDerivation = v: (v.type or null) == "derivation";

  walk = path: state: value:
    let
      forced = try value;
      v = forced.value;
      derivation = try (isDerivation v);
      drvPath = try v.drvPath;
    in
    if !forced.success then [ { inherit path; error = true; } ]
    else if !isAttrs v then
      (if matches state then [ { inherit path; other = typeOf v; } ] else [ ])
    else if !derivation.success then [ { inherit path; error = true; } ]
    else if derivation.value then
      (if !matches state then [ ]
       else if args.list or false then [ { inherit path; listed = true; } ]
       else if drvPath.success then [ { inherit path; drvPath = drvPath.value; } ]
       else [ { inherit path; error = true; } ])
    else
      (if explicit state then [ { inherit path; other = "set"; } ] else [ ])
      ++ concatMap
        (name:
          let next = advance state name; in
          if live next then walk (path ++ [ name ]) next v.${name} else [ ])
        (attrNames v);

  start = foldl' advance initial args.root;
in
walk args.root start (foldl' (v: name: v.${name}) outputs args.root)
