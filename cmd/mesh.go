package cmd

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/web"
)

func newMeshCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "mesh", Short: "Inspect the node's federated peer-to-peer cache and add members"}
	c.PersistentFlags().BoolVar(&cf.json, "json", false, "print the API's JSON object")

	c.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Print this node's peer ID, addresses, cache public key and announce counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			st, err := cl.MeshStatus(cmd.Context())
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "peer ID:\t%s\n", st.PeerID)
			for _, addr := range st.Addrs {
				fmt.Fprintf(tw, "address:\t%s\n", addr)
			}
			fmt.Fprintf(tw, "cache public key:\t%s\n", st.CachePublicKey)
			fmt.Fprintf(tw, "connected peers:\t%d\n", st.Peers)
			fmt.Fprintf(tw, "announced paths:\t%d (%d overdue)\n", st.Stats.Paths, st.Stats.Overdue)
			fmt.Fprintf(tw, "peer builds:\t%d\n", st.Stats.PeerBuilds)
			fmt.Fprintf(tw, "blocked peers:\t%d (served bad data)\n", st.Stats.BlockedPeers)
			return tw.Flush()
		},
	})

	c.AddCommand(&cobra.Command{
		Use:   "peers",
		Short: "List the connected peers, nearest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			peers, err := cl.MeshPeers(cmd.Context())
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), peers)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PEER ID\tORG\tLAN\tRTT\tADDRESS")
			for _, p := range peers {
				rtt := "-"
				if p.RTT > 0 {
					rtt = p.RTT.Round(10 * time.Microsecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", p.PeerID, p.Org, p.LAN, rtt, strings.Join(p.Addrs, " "))
			}
			return tw.Flush()
		},
	})

	c.AddCommand(newMeshTrustCommand(cf), newMeshFindCommand(cf))
	return c
}

func newMeshTrustCommand(cf *clientFlags) *cobra.Command {
	var req web.MeshTrustRequest
	c := &cobra.Command{
		Use:   "trust PEER-ID --key PUBLIC-KEY [--org NAME]",
		Short: "Add a node and its cache key to a member organisation of the federation and save the federation file",
		Long: `Add a node and its cache key to a member organisation of the federation and save the federation file.

PEER-ID and PUBLIC-KEY are the "peer ID" and "cache public key" lines that
'gradient mesh status' prints on the other node. Membership is checked on
both sides of a connection, so run 'gradient mesh trust' on each node for
the other. Trusting a node does not dial it: a node connects to the
members it knows an address of, from --mesh-bootstrap, mDNS or a Gradient
upstream, and retries its bootstrap addresses every 30 seconds while it
has no peer. To remove a node or a key, edit the federation file and
restart the node. See docs/mesh.md.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Key == "" {
				return fmt.Errorf("--key is missing: give the cache public key of the peer, name:base64, as its 'gradient mesh status' prints")
			}
			req.PeerID = args[0]
			cl, err := cf.client()
			if err != nil {
				return err
			}
			resp, err := cl.MeshTrust(cmd.Context(), req)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			members := "members"
			if len(resp.Members) == 1 {
				members = "member"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "trusted %s as a node of %s; saved %s (%d %s)\n", req.PeerID, resp.Org, resp.File, len(resp.Members), members)
			return nil
		},
	}
	c.Flags().StringVar(&req.Key, "key", "", "cache public key of the peer, name:base64")
	c.Flags().StringVar(&req.Org, "org", "", "member organisation (default: the name of the key)")
	return c
}

func newMeshFindCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "find STORE-PATH",
		Short: "Show which peers provide a store path and which build its derivation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			result, err := cl.MeshFind(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), result)
			}
			return printMeshFind(cmd.OutOrStdout(), result)
		},
	}
}

func printMeshFind(w io.Writer, result web.MeshFindResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "store path:\t%s\n", result.StorePath)
	if len(result.Providers) == 0 {
		fmt.Fprintf(tw, "providers:\tnone\n")
	}
	for _, p := range result.Providers {
		fmt.Fprintf(tw, "provider:\t%s (%s)\n", p.PeerID, p.Org)
	}
	if result.DrvPath != "" {
		fmt.Fprintf(tw, "derivation:\t%s\n", result.DrvPath)
	}
	for _, b := range result.Building {
		fmt.Fprintf(tw, "building:\t%s, expected at %s\n", b.PeerID, b.ETA.Format(time.RFC3339))
	}
	return tw.Flush()
}
