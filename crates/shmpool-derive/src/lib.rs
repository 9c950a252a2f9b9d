//! `#[derive(ShmSafe)]`: implements `shmpool::ShmSafe` for a `#[repr(C)]` (or
//! `#[repr(transparent)]`) struct whose every field is `ShmSafe`, checked at compile time.
//! Enums and unions are refused: not every bit pattern is a valid enum.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Error, Fields};

/// Derives `ShmSafe` for plain `#[repr(C)]` structs.
#[proc_macro_derive(ShmSafe)]
pub fn derive_shm_safe(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn has_stable_repr(input: &DeriveInput) -> bool {
    input.attrs.iter().filter(|a| a.path().is_ident("repr")).any(|a| {
        let mut stable = false;
        let _ = a.parse_nested_meta(|m| {
            stable |= m.path.is_ident("C") || m.path.is_ident("transparent");
            Ok(())
        });
        stable
    })
}

fn expand(input: &DeriveInput) -> Result<proc_macro2::TokenStream, Error> {
    let Data::Struct(data) = &input.data else {
        return Err(Error::new_spanned(&input.ident, "ShmSafe can only be derived for structs"));
    };
    if !has_stable_repr(input) {
        return Err(Error::new_spanned(
            &input.ident,
            "ShmSafe needs #[repr(C)] or #[repr(transparent)]: the layout must be the same in every process",
        ));
    }
    let types: Vec<&syn::Type> = match &data.fields {
        Fields::Named(f) => f.named.iter().map(|f| &f.ty).collect(),
        Fields::Unnamed(f) => f.unnamed.iter().map(|f| &f.ty).collect(),
        Fields::Unit => Vec::new(),
    };
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let mut where_clause = where_g.cloned().unwrap_or_else(|| syn::parse_quote!(where));
    for ty in &types {
        where_clause.predicates.push(syn::parse_quote!(#ty: ::shmpool::ShmSafe));
    }
    // No padding: its bytes are uninitialised, and copying a value out to shared memory
    // reads every byte. (Checked for non-generic structs; generic ones get it per use.)
    let no_padding = input.generics.params.is_empty().then(|| {
        quote! {
            const _: () = assert!(
                ::core::mem::size_of::<#name>() == 0 #(+ ::core::mem::size_of::<#types>())*,
                "ShmSafe structs must have no padding: add explicit padding fields",
            );
        }
    });
    Ok(quote! {
        // SAFETY: a #[repr(C)]/#[repr(transparent)] struct of ShmSafe fields (required by
        // the where clause) without padding has no pointers, no drop glue that matters,
        // and is valid for any bit pattern, as each of its fields is.
        unsafe impl #impl_g ::shmpool::ShmSafe for #name #ty_g #where_clause {}
        #no_padding
    })
}
